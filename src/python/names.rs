//! Names of Python frames the way sentry-python writes them: `module` from the file's path
//! under its import root, `filename` relative to that root, `in_app` false for the standard
//! library and installed packages; and the label of local outputs.

pub use profiler_sentry::python::short_filename;

/// The dotted module name derived from the file: `django.core.handlers.base`, `json`
/// (for `json/__init__.py`), `app`; frozen modules by their name.
pub fn module_name(path: &str) -> String {
    if let Some(frozen) = path
        .strip_prefix("<frozen ")
        .and_then(|s| s.strip_suffix('>'))
    {
        return frozen.to_string();
    }
    let rel = short_filename(path);
    let rel = rel
        .strip_suffix(".py")
        .or_else(|| rel.strip_suffix(".pyc"))
        .unwrap_or(rel);
    let rel = rel.strip_suffix("/__init__").unwrap_or(rel);
    rel.replace('/', ".")
}

pub use profiler_sentry::python::path_in_app as in_app;

/// The label in folded stacks and flame graphs: `function (file:first line)`: the function's
/// qualified name and where it is defined, without the line being executed (which would
/// split one function into one frame per line); the executed line goes to the formats that
/// carry lines (Sentry, speedscope, pprof, Firefox Profiler).
pub fn label(function: &str, filename: &str, first_line: u32) -> String {
    format!("{function} ({}:{first_line})", short_filename(filename))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_sentry_python_writes_them() {
        let p = "/srv/venv/lib/python3.11/site-packages/django/core/handlers/base.py";
        assert_eq!(short_filename(p), "django/core/handlers/base.py");
        assert_eq!(module_name(p), "django.core.handlers.base");
        assert!(!in_app(p));
        let p = "/usr/lib/python3.11/json/__init__.py";
        assert_eq!(module_name(p), "json");
        assert_eq!(short_filename(p), "json/__init__.py");
        assert!(!in_app(p));
        let p = "/root/.pyenv/versions/3.12.1/lib/python3.12/threading.py";
        assert_eq!(module_name(p), "threading");
        assert!(!in_app(p));
        let p = "/usr/lib/python3/dist-packages/requests/api.py";
        assert_eq!(module_name(p), "requests.api");
        assert!(!in_app(p));
        let p = "/srv/app/views.py";
        assert_eq!(module_name(p), "views");
        assert_eq!(short_filename(p), "views.py");
        assert!(in_app(p));
        assert_eq!(
            module_name("<frozen importlib._bootstrap>"),
            "importlib._bootstrap"
        );
        assert!(!in_app("<frozen importlib._bootstrap>"));
        assert_eq!(label("Worker.step", p, 12), "Worker.step (views.py:12)");
    }
}
