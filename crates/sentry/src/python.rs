//! sentry-python's naming rules for Python frames, so frames the agent reads from a CPython
//! process look like the ones sentry-python sends: `filename` relative to the import root,
//! `in_app` false for the standard library and installed packages.

/// The length of the import root of an absolute file path, as far as the path shows it: up
/// to `site-packages/`, `dist-packages/` or `lib/pythonX.Y/` (the standard library, and its
/// `lib-dynload/`). None for files elsewhere (the application's own).
pub fn import_root_len(path: &str) -> Option<usize> {
    for marker in ["/site-packages/", "/dist-packages/"] {
        if let Some(i) = path.rfind(marker) {
            return Some(i + marker.len());
        }
    }
    let i = path.find("/lib/python")?;
    let rest = &path[i + "/lib/python".len()..];
    let slash = rest.find('/')?;
    let ver = &rest[..slash];
    if ver.starts_with('3')
        && ver
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == 't')
    {
        let mut end = i + "/lib/python".len() + slash + 1;
        if path[end..].starts_with("lib-dynload/") {
            end += "lib-dynload/".len();
        }
        return Some(end);
    }
    None
}

/// The file name relative to its import root (`django/core/handlers/base.py`), or the file's
/// name alone when the root is not known (`app.py`); pseudo-files (`<string>`,
/// `<frozen importlib._bootstrap>`) as they are.
pub fn short_filename(path: &str) -> &str {
    if !path.starts_with('/') {
        return path;
    }
    match import_root_len(path) {
        Some(n) => &path[n..],
        None => path.rsplit('/').next().unwrap_or(path),
    }
}

/// sentry-python's rule: not app code under `site-packages`/`dist-packages` or in the
/// standard library (`lib/pythonX.Y/`), nor frozen or generated code (`<...>`).
pub fn path_in_app(path: &str) -> bool {
    !path.starts_with('<') && import_root_len(path).is_none()
}
