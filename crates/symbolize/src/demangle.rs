//! Symbol name demangling: Rust legacy and v0 manglings (printed without the hash and
//! disambiguators), C++ Itanium manglings (with parameter lists, like c++filt, perf and
//! samply) and GCC/LLVM clone suffixes. Names that are not mangled come back unchanged.

use std::sync::OnceLock;

use cpp_demangle::{DemangleOptions, ParseOptions};

/// A second C++ demangler, tried on the names `cpp_demangle` cannot read (some template
/// expressions): the caller's, e.g. GNU's from the C++ runtime. Returns None on failure.
pub type CppFallback = fn(&str) -> Option<String>;

static CPP_FALLBACK: OnceLock<CppFallback> = OnceLock::new();

/// Set the process-wide C++ fallback demangler (the first call wins; true if it did).
pub fn set_cpp_fallback(f: CppFallback) -> bool {
    CPP_FALLBACK.set(f).is_ok()
}

/// Demangle a symbol name of any supported language.
///
/// - Rust legacy (`_ZN...17h<hash>E`) and v0 (`_R...`) names print without the hash and
///   crate disambiguators (`app::engine::run`).
/// - C++ Itanium names (`_Z...`) print with their parameter lists
///   (`app::engine::Accumulator<int>::run()`); GCC clone suffixes print like c++filt
///   (`foo(int) [clone .cold]`).
/// - Anything else (C names, already demangled names, `foo.cold`) is returned as is, except
///   that a trailing Rust hash (`::h0123456789abcdef`) is removed.
pub fn demangle(name: &str) -> String {
    let name = strip_llvm_suffix(name);
    if let Some(rust) = demangle_rust(name) {
        return rust;
    }
    if let Some(cpp) = demangle_cpp(name) {
        return cpp;
    }
    strip_rust_hash(name).to_string()
}

/// True when `name` still looks like a mangled symbol (`_Z...`, `_R...`) or carries a
/// Rust hash: such a name should never be shown.
pub fn looks_mangled(name: &str) -> bool {
    let name = name.trim_start_matches('_');
    let mangled_prefix = |p: &str| {
        name.strip_prefix(p)
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    (mangled_prefix("Z") && name.contains(|c: char| c.is_ascii_digit()))
        || (mangled_prefix("R") && name[1..].starts_with(|c: char| c.is_ascii_uppercase()))
        || strip_rust_hash(name).len() != name.len()
}

/// Remove an LLVM ThinLTO `.llvm.<hex>` suffix: it carries no meaning for a reader.
fn strip_llvm_suffix(name: &str) -> &str {
    if let Some(i) = name.find(".llvm.") {
        let rest = &name[i + ".llvm.".len()..];
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'@') {
            return &name[..i];
        }
    }
    name
}

/// Rust names: `_R` (v0) always, `_ZN` (legacy) only when the last path element is the
/// `h<16 hex>` hash, so C++ names such as `_ZN3foo3barE` stay with the C++ demangler.
fn demangle_rust(name: &str) -> Option<String> {
    let v0 = name.starts_with("_R") || name.starts_with("__R");
    let legacy = (name.starts_with("_ZN") || name.starts_with("__ZN")) && has_legacy_hash(name);
    if !v0 && !legacy {
        return None;
    }
    let demangled = rustc_demangle::try_demangle(name).ok()?;
    Some(format!("{demangled:#}"))
}

/// True when a legacy-mangled name ends its path with `17h<16 hex>E` (optionally followed by
/// a `.suffix`).
fn has_legacy_hash(name: &str) -> bool {
    let Some(end) = name.rfind('E') else {
        return false;
    };
    let path = &name[..end];
    path.len() >= 19 && {
        let tail = &path[path.len() - 19..];
        tail.starts_with("17h") && tail[3..].bytes().all(|b| b.is_ascii_hexdigit())
    }
}

/// C++ Itanium names, with any clone suffixes cpp_demangle does not understand demangled
/// on the base and appended as ` [clone .suffix]`; the fallback demangler (when set) reads
/// what cpp_demangle cannot.
fn demangle_cpp(name: &str) -> Option<String> {
    if !name.starts_with("_Z") {
        return None;
    }
    if let Some(s) = cpp_once(name) {
        return Some(s);
    }
    if let Some(s) = CPP_FALLBACK
        .get()
        .and_then(|f| f(name))
        .filter(|s| !looks_mangled(s))
    {
        return Some(s);
    }
    // Retry without the suffix: the base must demangle on its own.
    let dot = name.find('.')?;
    let (base, suffix) = name.split_at(dot);
    let base = cpp_once(base)?;
    Some(format!("{base} [clone {suffix}]"))
}

fn cpp_once(name: &str) -> Option<String> {
    let parse = ParseOptions::default().recursion_limit(256);
    let symbol = cpp_demangle::Symbol::new_with_options(name, &parse).ok()?;
    let options = DemangleOptions::new().recursion_limit(256);
    let out = symbol.demangle_with_options(&options).ok()?;
    (!out.is_empty()).then_some(out)
}

/// Remove a trailing `::h<16 hex>` Rust hash from an already demangled name.
fn strip_rust_hash(name: &str) -> &str {
    // Names come from the file and need not be ASCII: cut only at a character boundary.
    if name.len() >= 19 && name.is_char_boundary(name.len() - 19) {
        let (head, tail) = name.split_at(name.len() - 19);
        if tail.starts_with("::h") && tail[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return head;
        }
    }
    name
}

/// The last path component of a demangled name without parameters, template arguments or
/// qualifiers: `ns::Foo<int>::run(int) const` -> `run`. Used to check that a symbol table
/// name and a short DWARF name denote the same function.
pub(crate) fn base_name(name: &str) -> &str {
    let mut s = name.trim_end();
    // A clone suffix from the C++ demangler.
    if let Some(i) = s.find(" [clone ")
        && s.ends_with(']')
    {
        s = s[..i].trim_end();
    }
    for qualifier in [" const", " volatile", " &&", " &"] {
        if let Some(rest) = s.strip_suffix(qualifier) {
            s = rest;
        }
    }
    s = strip_trailing_group(s, '(', ')');
    s = strip_trailing_group(s, '<', '>');
    // The last `::` outside of any bracket.
    let mut depth = 0i32;
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' | b'(' | b'[' | b'{' => depth += 1,
            b'>' | b')' | b']' | b'}' => depth -= 1,
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b':') => {
                start = i + 2;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    &s[start.min(s.len())..]
}

/// Remove one balanced `open ... close` group at the end of `s`, if `s` ends with `close`.
fn strip_trailing_group(s: &str, open: char, close: char) -> &str {
    if !s.ends_with(close) || s.ends_with("operator>") || s.ends_with("operator()") {
        return s;
    }
    let mut depth = 0i32;
    for (i, c) in s.char_indices().rev() {
        if c == close {
            depth += 1;
        } else if c == open {
            depth -= 1;
            if depth == 0 {
                return s[..i].trim_end();
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_names_do_not_panic() {
        // A multi-byte character straddling the place where a `::h<16 hex>` hash would
        // start (names from a corrupt string table).
        let name = format!("{}\u{20ac}{}", "x".repeat(3), "y".repeat(17));
        assert_eq!(strip_rust_hash(&name), name);
        for n in [
            "\u{20ac}\u{20ac}\u{20ac}\u{20ac}\u{20ac}\u{20ac}\u{20ac}",
            "_ZN\u{20ac}\u{20ac}E",
            "_R\u{fffd}",
        ] {
            let _ = demangle(n);
        }
    }

    #[test]
    fn rust_legacy_without_hash() {
        assert_eq!(
            demangle("_ZN3std2rt10lang_start17h3a2b5e8f0c1d2e3fE"),
            "std::rt::lang_start"
        );
        assert_eq!(
            demangle(
                "_ZN4core3ptr85drop_in_place$LT$std..rt..lang_start$LT$$LP$$RP$$GT$..$u7b$$u7b$closure$u7d$$u7d$$GT$17h1234567890abcdefE"
            ),
            "core::ptr::drop_in_place<std::rt::lang_start<()>::{{closure}}>"
        );
        // LLVM ThinLTO suffix dropped, GCC-style suffix kept readable.
        assert_eq!(
            demangle("_ZN3app6engine3run17h0123456789abcdefE.llvm.1234ABCD"),
            "app::engine::run"
        );
        assert_eq!(
            demangle("_ZN3app6engine3run17h0123456789abcdefE.cold"),
            "app::engine::run.cold"
        );
    }

    #[test]
    fn rust_v0_without_disambiguators() {
        // `<std::path::PathBuf>::new`, crate disambiguator and no hash visible.
        assert_eq!(
            demangle("_RNvMsr_NtCs3ssYzQotkvD_3std4pathNtB5_7PathBuf3newCs15kBYyAo9fc_7mycrate"),
            "<std::path::PathBuf>::new"
        );
        assert_eq!(demangle("_RNvCs1234_7mycrate4main"), "mycrate::main");
        assert!(!demangle("_RNvCs1234_7mycrate4main").contains('['));
    }

    #[test]
    fn cpp_names() {
        assert_eq!(
            demangle("_ZN3app6engine11AccumulatorIiE3runEv"),
            "app::engine::Accumulator<int>::run()"
        );
        assert_eq!(demangle("_ZN2ns3fooEi"), "ns::foo(int)");
        // A lambda inside main.
        assert_eq!(
            demangle("_ZZ4mainENKUlvE_clEv"),
            "main::{lambda()#1}::operator()() const"
        );
        // Template function with return type.
        assert_eq!(
            demangle("_ZN3app5applyIdEET_S1_"),
            "double app::apply<double>(double)"
        );
        // Anonymous namespace.
        assert_eq!(
            demangle("_ZN12_GLOBAL__N_16helperEv"),
            "(anonymous namespace)::helper()"
        );
        // C++ names that rustc_demangle would also accept stay C++.
        assert_eq!(demangle("_ZN3foo3barE"), "foo::bar");
    }

    #[test]
    fn gcc_suffixes() {
        assert_eq!(demangle("_ZN2ns3fooEi.cold"), "ns::foo(int) [clone .cold]");
        assert_eq!(
            demangle("_ZN2ns3fooEi.isra.0"),
            "ns::foo(int) [clone .isra.0]"
        );
        let d = demangle("_ZN2ns3fooEi.constprop.0.isra.0");
        assert!(d.starts_with("ns::foo(int) [clone"), "{d}");
        assert!(!d.contains("_Z"), "{d}");
        let d = demangle("_ZN2ns3fooEi.lto_priv.0");
        assert!(d.starts_with("ns::foo(int)"), "{d}");
        assert!(!d.contains("_Z"), "{d}");
        // C names keep their suffixes as they are.
        assert_eq!(demangle("compute.cold"), "compute.cold");
        assert_eq!(demangle("compute.part.0"), "compute.part.0");
    }

    #[test]
    fn plain_names_unchanged() {
        for name in [
            "main",
            "memcpy",
            "__libc_start_main",
            "_start",
            "_init",
            "Z",
            "_Zfoo",
        ] {
            assert_eq!(demangle(name), name);
        }
        // Already demangled Rust names lose only their hash.
        assert_eq!(
            demangle("app::engine::run::h0123456789abcdef"),
            "app::engine::run"
        );
        assert_eq!(demangle("app::engine::run"), "app::engine::run");
    }

    #[test]
    fn mangled_detection() {
        assert!(looks_mangled("_ZN3foo3barE"));
        assert!(looks_mangled("_RNvCs1234_7mycrate4main"));
        assert!(looks_mangled("foo::bar::h0123456789abcdef"));
        assert!(!looks_mangled("main"));
        assert!(!looks_mangled("foo::bar"));
        assert!(!looks_mangled("Rc"));
    }

    #[test]
    fn base_names() {
        assert_eq!(
            base_name("app::engine::Accumulator<int>::run() const"),
            "run"
        );
        assert_eq!(base_name("ns::foo(int) [clone .cold]"), "foo");
        assert_eq!(base_name("main"), "main");
        assert_eq!(
            base_name("std::vector<int, std::allocator<int> >::push_back(int const&)"),
            "push_back"
        );
        assert_eq!(base_name("app::apply<double>"), "apply");
        assert_eq!(base_name("mycrate::module::function"), "function");
    }
}
