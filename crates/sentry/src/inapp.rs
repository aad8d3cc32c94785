//! The `in_app` flag of Sentry frames: which frames are the user's own code.
//!
//! Default rule, on the frame's package (the path of the module it is in):
//! - false for the vDSO (`[vdso]`, `linux-vdso.so.*`, `linux-gate.so.*`), for anything under
//!   the system library directories `/lib/`, `/lib32/`, `/lib64/`, `/libx32/`, `/usr/lib/`,
//!   `/usr/lib32/`, `/usr/lib64/`, `/usr/libx32/`, `/usr/libexec/`, and for the C/C++ runtime
//!   (`libc.so*`, `libstdc++.so*`, `libgcc_s.so*`, `libm.so*`, `libpthread.so*`, `libdl.so*`,
//!   `librt.so*`, `ld-linux*.so*`, `ld-musl*`) wherever they live;
//! - false for a frame with no known module;
//! - true for the main executable when set with [`InAppRules::with_main_executable`], even
//!   under a system directory (e.g. `/usr/lib/firefox/firefox`);
//! - true otherwise (the main executable and non-system libraries, e.g. under `/usr/local`,
//!   `/opt`, `/home`, or the build tree).
//!
//! User patterns override the default: `--not-in-app` patterns first (a match makes the frame
//! not in-app), then `--in-app` patterns (a match makes it in-app). A pattern is tested against
//! the package path and against the function name:
//! - a pattern with `*` (any run of characters, `/` and `:` included) or `?` (one character)
//!   is a glob that must match the whole string, e.g. `/opt/app/*`, `*::vendor::*`, `std::*`;
//! - a pattern without wildcards matches when it is a substring, e.g. `libfoo`, `myapp::`.

/// One user pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    glob: bool,
}

impl Pattern {
    /// Compile a pattern (see the module docs for its meaning).
    pub fn new(text: &str) -> Self {
        Pattern {
            text: text.to_string(),
            glob: text.contains(['*', '?']),
        }
    }

    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        if self.glob {
            glob_match(self.text.as_bytes(), s.as_bytes())
        } else {
            !self.text.is_empty() && s.contains(&self.text)
        }
    }
}

/// Iterative wildcard match with single-star backtracking; `*` any run, `?` one byte.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The in-app decision: system-path defaults plus user overrides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InAppRules {
    in_app: Vec<Pattern>,
    not_in_app: Vec<Pattern>,
    main_executable: Option<String>,
}

const SYSTEM_DIRS: &[&str] = &[
    "/lib/",
    "/lib32/",
    "/lib64/",
    "/libx32/",
    "/usr/lib/",
    "/usr/lib32/",
    "/usr/lib64/",
    "/usr/libx32/",
    "/usr/libexec/",
];

const RUNTIME_LIBS: &[&str] = &[
    "libc.so",
    "libstdc++.so",
    "libgcc_s.so",
    "libm.so",
    "libpthread.so",
    "libdl.so",
    "librt.so",
    "ld-linux",
    "ld-musl",
    "libc.musl",
];

/// True when `package` is a system module by the default rule.
pub fn is_system_package(package: &str) -> bool {
    let base = package.rsplit('/').next().unwrap_or(package);
    package == "[vdso]"
        || package == "[vsyscall]"
        || base.starts_with("linux-vdso.so")
        || base.starts_with("linux-gate.so")
        || SYSTEM_DIRS.iter().any(|d| package.starts_with(d))
        || RUNTIME_LIBS.iter().any(|l| base.starts_with(l))
}

impl InAppRules {
    /// Rules with user patterns; either list may be empty.
    pub fn new<S: AsRef<str>>(in_app: &[S], not_in_app: &[S]) -> Self {
        InAppRules {
            in_app: in_app.iter().map(|p| Pattern::new(p.as_ref())).collect(),
            not_in_app: not_in_app
                .iter()
                .map(|p| Pattern::new(p.as_ref()))
                .collect(),
            main_executable: None,
        }
    }

    /// Treat `path` (the target's executable, as its frames' package shows it) as app code
    /// by default wherever it lives.
    pub fn with_main_executable(mut self, path: &str) -> Self {
        self.main_executable = Some(path.to_string());
        self
    }

    /// The `in_app` value of a frame in module `package` (None: unknown module) running
    /// `function` (None: unsymbolized).
    pub fn is_in_app(&self, package: Option<&str>, function: Option<&str>) -> bool {
        let hit = |pats: &[Pattern]| {
            pats.iter().any(|p| {
                package.is_some_and(|s| p.matches(s)) || function.is_some_and(|s| p.matches(s))
            })
        };
        if hit(&self.not_in_app) {
            return false;
        }
        if hit(&self.in_app) {
            return true;
        }
        match package {
            Some(p) if self.main_executable.as_deref() == Some(p) => true,
            Some(p) if !p.is_empty() => !is_system_package(p),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let r = InAppRules::default();
        let t = |p: &str| r.is_in_app(Some(p), Some("f"));
        assert!(t("/usr/local/bin/demo"));
        assert!(t("/home/me/proj/target/debug/app"));
        assert!(t("/opt/vendor/libfoo.so.1"));
        assert!(t("/usr/bin/python3.11"));
        assert!(!t("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(!t("/lib/x86_64-linux-gnu/libstdc++.so.6.0.30"));
        assert!(!t("/lib64/ld-linux-x86-64.so.2"));
        assert!(!t("/usr/lib64/libssl.so.3"));
        assert!(!t("/usr/libexec/helper"));
        assert!(!t("[vdso]"));
        assert!(!t("linux-vdso.so.1"));
        // Runtime libraries are system wherever they are.
        assert!(!t("/nix/store/abc-glibc-2.39/lib/libc.so.6"));
        assert!(!t("/opt/gcc/lib64/libgcc_s.so.1"));
        assert!(!t("/nix/store/x/lib/ld-linux-x86-64.so.2"));
        assert!(!t("/usr/local/lib/libm.so.6"));
        // Similar names that are not the runtime.
        assert!(t("/usr/local/lib/libmagic.so.1"));
        assert!(t("/srv/libcrypto_app"));
        assert!(!r.is_in_app(None, Some("main")));
        assert!(!r.is_in_app(Some(""), None));
    }

    #[test]
    fn patterns() {
        assert!(Pattern::new("libfoo").matches("/opt/x/libfoo.so"));
        assert!(!Pattern::new("libfoo").matches("/opt/x/libbar.so"));
        assert!(Pattern::new("/opt/app/*").matches("/opt/app/lib/libz.so"));
        assert!(!Pattern::new("/opt/app/*").matches("/srv/opt/app/x"));
        assert!(Pattern::new("*::vendor::*").matches("crate::vendor::f"));
        assert!(Pattern::new("std::*").matches("std::io::read"));
        assert!(!Pattern::new("std::*").matches("core::std::x"));
        assert!(Pattern::new("lib?.so").matches("libz.so"));
        assert!(!Pattern::new("lib?.so").matches("libzz.so"));
        assert!(Pattern::new("*a*b*c").matches("xxaxxbxxbxc"));
        assert!(!Pattern::new("*a*b*c").matches("xxaxxbxxbx"));
        assert!(!Pattern::new("").matches("anything"));
    }

    #[test]
    fn overrides() {
        let r = InAppRules::new(
            &["/usr/lib/myapp/*", "mycrate::"],
            &["*vendored*", "std::*"],
        );
        assert!(r.is_in_app(Some("/usr/lib/myapp/libcore.so"), Some("x")));
        assert!(r.is_in_app(
            Some("/lib/x86_64-linux-gnu/libc.so.6"),
            Some("mycrate::hook")
        ));
        assert!(!r.is_in_app(Some("/usr/local/bin/app"), Some("std::rt::lang_start")));
        // not-in-app wins over in-app.
        assert!(!r.is_in_app(Some("/usr/lib/myapp/vendored/libz.so"), Some("inflate")));
        // Overrides also reach frames with no module.
        assert!(r.is_in_app(None, Some("mycrate::jit_stub")));

        let exe = "/usr/lib/firefox/firefox";
        let r = InAppRules::new(&[] as &[&str], &["*::vendor::*"]).with_main_executable(exe);
        assert!(r.is_in_app(Some(exe), Some("main")));
        assert!(
            !r.is_in_app(Some(exe), Some("moz::vendor::x")),
            "--not-in-app still wins"
        );
        assert!(!r.is_in_app(Some("/usr/lib/firefox/libxul.so"), Some("f")));
    }
}
