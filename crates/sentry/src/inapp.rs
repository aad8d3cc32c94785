//! The `in_app` flag of Sentry frames: which frames are the user's own code.
//!
//! Default rule, on the frame's package (the path of the module it is in):
//! - false for the vDSO (`[vdso]`, `linux-vdso.so.*`, `linux-gate.so.*`), for anything under
//!   the system library directories `/lib/`, `/lib32/`, `/lib64/`, `/libx32/`, `/usr/lib/`,
//!   `/usr/lib32/`, `/usr/lib64/`, `/usr/libx32/`, `/usr/libexec/`, and for the C/C++ runtime
//!   (`libc.so*`, `libstdc++.so*`, `libgcc_s.so*`, `libm.so*`, `libpthread.so*`, `libdl.so*`,
//!   `librt.so*`, `ld-linux*.so*`, `ld-musl*`) wherever they live;
//! - false for the standard libraries' frames wherever they are, even inlined or
//!   monomorphised into the main executable (as Sentry's native grouping rules treat them):
//!   functions in `std::`, `core::`, `alloc::`, `__gnu_cxx::`, `__cxxabiv1::` (also as the
//!   self type of a Rust `<std::... as Trait>::f`), `__rust_*`, `rust_begin_unwind`, and
//!   source files of the Rust standard library (`/rustc/<hash>/library/...`, a toolchain's
//!   `lib/rustlib/src/rust/library/`) or under the compiler's and the system's include
//!   directories (`/usr/include/`, `.../include/c++/`, `/usr/lib/gcc/`, `/usr/lib/llvm*`);
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
        // Python's C extensions and interpreter libraries installed as packages or with
        // the standard library (a venv's site-packages, pyenv's lib/python3.X): not app
        // code, as sentry-python says of their Python files.
        || crate::python::import_root_len(package).is_some()
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
    /// `function` (None: unsymbolized), without a source file.
    pub fn is_in_app(&self, package: Option<&str>, function: Option<&str>) -> bool {
        self.is_in_app_frame(package, function, None)
    }

    /// The `in_app` value of one frame: module `package`, `function` and source `file`
    /// (each None when unknown). Decided per frame, so a standard library function inlined
    /// into the target's executable is not app code while the executable's own are.
    pub fn is_in_app_frame(
        &self,
        package: Option<&str>,
        function: Option<&str>,
        file: Option<&str>,
    ) -> bool {
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
        if function.is_some_and(is_std_function) || file.is_some_and(is_std_source) {
            return false;
        }
        match package {
            Some(p) if self.main_executable.as_deref() == Some(p) => true,
            Some(p) if !p.is_empty() => !is_system_package(p),
            _ => false,
        }
    }
}

impl InAppRules {
    /// `in_app` of a Python frame: `--not-in-app`, then `--in-app` patterns (matched against
    /// the dotted module, the function and the file path), then sentry-python's rule (not
    /// the standard library, not installed packages).
    pub fn is_in_app_python(
        &self,
        module: Option<&str>,
        function: Option<&str>,
        abs_path: Option<&str>,
    ) -> bool {
        let hit = |pats: &[Pattern]| {
            pats.iter().any(|p| {
                [module, function, abs_path]
                    .iter()
                    .any(|s| s.is_some_and(|s| p.matches(s)))
            })
        };
        if hit(&self.not_in_app) {
            return false;
        }
        if hit(&self.in_app) {
            return true;
        }
        abs_path.is_some_and(crate::python::path_in_app)
    }
}

/// Namespaces of the C++ and Rust standard libraries and runtimes.
const STD_NAMESPACES: &[&str] = &["std::", "core::", "alloc::", "__gnu_cxx::", "__cxxabiv1::"];

/// True for a function of the standard libraries: its qualified name (without return type
/// and parameters) is in one of their namespaces, or it is a Rust runtime entry point.
pub fn is_std_function(function: &str) -> bool {
    let name = qualified_name(function);
    // A Rust impl path: `<alloc::vec::Vec<T> as core::ops::Drop>::drop` is std's code,
    // `<app::Foo as core::fmt::Display>::fmt` the app's.
    let name = name.strip_prefix('<').unwrap_or(name);
    STD_NAMESPACES.iter().any(|ns| name.starts_with(ns))
        || name.starts_with("__rust_")
        || name == "rust_begin_unwind"
}

/// True for a source file of the standard libraries or of system headers: the Rust
/// standard library as rustc records it (`/rustc/<commit>/library/...`) or as a toolchain
/// installs it, and the compiler's and the system's include directories (libstdc++'s
/// templates, glibc's inline functions).
pub fn is_std_source(file: &str) -> bool {
    file.starts_with("/rustc/")
        || file.contains("/lib/rustlib/src/rust/library/")
        || file.starts_with("/usr/include/")
        || file.contains("/include/c++/")
        || file.starts_with("/usr/lib/gcc/")
        || file.starts_with("/usr/lib/llvm")
}

/// The qualified name of a demangled function: without a C++ return type, parameter list,
/// cv/ref qualifiers or clone suffix. `void std::sort<int*>(int*, int*)` -> `std::sort<int*>`,
/// `std::vector<int>& app::f() const` -> `app::f`.
fn qualified_name(function: &str) -> &str {
    let mut s = function.trim();
    if let Some(i) = s.find(" [clone ") {
        s = s[..i].trim_end();
    }
    loop {
        let before = s.len();
        for q in [" const", " volatile", " &&", " &"] {
            if let Some(rest) = s.strip_suffix(q) {
                s = rest.trim_end();
            }
        }
        if s.len() == before {
            break;
        }
    }
    // The parameter list: a balanced `(...)` at the end (not `operator()` itself).
    if s.ends_with(')') && !s.ends_with("operator()") {
        let mut depth = 0i32;
        for (i, c) in s.char_indices().rev() {
            match c {
                ')' => depth += 1,
                '(' => {
                    depth -= 1;
                    if depth == 0 {
                        s = s[..i].trim_end();
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    // A return type ends at the last space outside brackets (but `operator new` and
    // `operator delete[]` keep theirs).
    let bytes = s.as_bytes();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'<' | b'(' | b'[' | b'{' => depth += 1,
            b'>' | b')' | b']' | b'}' => depth -= 1,
            b' ' if depth == 0 && !s[..i].ends_with("operator") => start = i + 1,
            _ => {}
        }
    }
    &s[start..]
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
    fn standard_library_frames_are_not_app_code() {
        let exe = "/srv/app/bin/server";
        let r = InAppRules::default().with_main_executable(exe);
        let t = |f: &str, file: Option<&str>| r.is_in_app_frame(Some(exe), Some(f), file);
        // Rust std/core/alloc, monomorphised or inlined into the executable.
        assert!(!t("std::panicking::catch_unwind", None));
        assert!(!t("core::ops::function::FnOnce::call_once", None));
        assert!(!t("std::thread::lifecycle::spawn_unchecked", None));
        assert!(!t(
            "<alloc::boxed::Box<F,A> as core::ops::function::FnOnce<Args>>::call_once",
            None
        ));
        assert!(!t("__rust_begin_short_backtrace", None));
        assert!(!t("rust_begin_unwind", None));
        // A std source file decides when the name does not (a closure body in std).
        let std_file = "/rustc/90b35a6239c3d8bdabc530a6a0816f7ff89a0aaf/library/std/src/rt.rs";
        assert!(!t("{closure#0}", Some(std_file)));
        assert!(!t(
            "x",
            Some(
                "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/library/core/src/iter.rs"
            )
        ));
        // C++: libstdc++ templates, with return types and clone suffixes.
        assert!(!t("void std::sort<int*>(int*, int*)", None));
        assert!(!t(
            "std::vector<int, std::allocator<int> >::push_back(int const&)",
            None
        ));
        assert!(!t(
            "__gnu_cxx::__normal_iterator<int*, std::vector<int> >::operator++()",
            None
        ));
        assert!(!t(
            "std::thread::_State_impl<x>::_M_run() [clone .cold]",
            None
        ));
        assert!(!t("f", Some("/usr/include/c++/12/bits/stl_algo.h")));
        assert!(!t("f", Some("/opt/gcc-13/include/c++/13/bits/vector.tcc")));
        assert!(!t(
            "f",
            Some("/usr/lib/gcc/x86_64-linux-gnu/12/include/avxintrin.h")
        ));
        // The app's own functions stay app code, even when they mention std types.
        assert!(t("rust_app::crunch", Some("/src/rust_app.rs")));
        assert!(t("<rust_app::Square as core::fmt::Display>::fmt", None));
        assert!(t(
            "std::vector<int, std::allocator<int> >& app::engine::items() const",
            None
        ));
        assert!(t(
            "double app::apply<double>(double)",
            Some("/src/cpp_app.cpp")
        ));
        assert!(t("main::{lambda()#1}::operator()() const", None));
        assert!(t("app::Foo::operator()(int)", None));
        assert!(t("app::mystd::f", None));
        assert!(t("main", None));
        // --in-app / --not-in-app still win.
        let r =
            InAppRules::new(&["std::thread::*"], &["rust_app::crunch*"]).with_main_executable(exe);
        assert!(r.is_in_app_frame(Some(exe), Some("std::thread::spawn"), None));
        assert!(!r.is_in_app_frame(Some(exe), Some("rust_app::crunch"), None));
    }

    #[test]
    fn qualified_names() {
        assert_eq!(
            qualified_name("void std::sort<int*>(int*, int*)"),
            "std::sort<int*>"
        );
        assert_eq!(qualified_name("app::f() const &"), "app::f");
        assert_eq!(
            qualified_name("operator new(unsigned long)"),
            "operator new"
        );
        assert_eq!(
            qualified_name("std::map<int, int>::operator[](int const&)"),
            "std::map<int, int>::operator[]"
        );
        assert_eq!(
            qualified_name("main::{lambda()#1}::operator()() const"),
            "main::{lambda()#1}::operator()"
        );
        assert_eq!(qualified_name("ns::foo(int) [clone .isra.0]"), "ns::foo");
        assert_eq!(qualified_name("rust_app::main"), "rust_app::main");
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
