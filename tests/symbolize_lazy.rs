//! DWARF units read on demand name every address exactly as addr2line's whole-file index
//! does: compared byte by byte over programs built here (several translation units, with
//! and without LTO), the fixtures and the system's libc; and naming one address parses
//! only the unit that holds it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSection, SectionKind};
use profiler::symbolize::{ModuleDesc, SymFrame, Symbolizer};

const UNIT_A: &str = r#"
static inline __attribute__((always_inline)) int mix(int x) { return x * 31 + (x >> 3); }
__attribute__((noinline)) int unit_a(int n) {
    int acc = 0;
    for (int i = 0; i < n; i++) acc = mix(acc + i);
    return acc;
}
"#;

const UNIT_B: &str = r#"
#include <string.h>
__attribute__((noinline)) int unit_b(const char *s) {
    int h = 7;
    for (size_t i = 0; i < strlen(s); i++) h = h * 33 + s[i];
    return h;
}
"#;

const MAIN: &str = r#"
#include <stdio.h>
int unit_a(int);
int unit_b(const char *);
int main(int argc, char **argv) {
    printf("%d %d\n", unit_a(argc * 100), unit_b(argv[0]));
    return 0;
}
"#;

/// Build the three-unit C program into `dir` with `args`.
fn build(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    for (file, text) in [("a.c", UNIT_A), ("b.c", UNIT_B), ("main.c", MAIN)] {
        std::fs::write(dir.join(file), text).unwrap();
    }
    let out = dir.join(name);
    let status = Command::new("cc")
        .current_dir(dir)
        .args(args)
        .args(["-Wl,--build-id", "a.c", "b.c", "main.c", "-o"])
        .arg(&out)
        .status()
        .expect("running cc");
    assert!(status.success(), "cc {args:?} failed");
    out
}

fn desc(path: &Path) -> ModuleDesc {
    common::module_desc(path)
}

/// Addresses across the executable sections of `path`, at most about `max` of them.
fn code_addresses(path: &Path, max: u64) -> Vec<u64> {
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let text: Vec<(u64, u64)> = file
        .sections()
        .filter(|s| s.kind() == SectionKind::Text)
        .map(|s| (s.address(), s.size()))
        .collect();
    let total: u64 = text.iter().map(|(_, n)| n).sum();
    // An odd stride, so addresses fall at every offset within instructions.
    let stride = (total / max.max(1)).max(1) | 1;
    text.iter()
        .flat_map(|&(start, len)| (start..start + len).step_by(stride as usize))
        .collect()
}

/// Name `addrs` in `module` both ways; panics on the first difference. Returns the lazy
/// symbolizer, for its unit counts.
fn compare(module: &ModuleDesc, addrs: &[u64]) -> Symbolizer {
    let mut lazy = Symbolizer::new(Vec::new());
    let mut whole = Symbolizer::new(Vec::new());
    whole.set_lazy_units(false);
    let mut named = 0;
    for &a in addrs {
        let l: Vec<SymFrame> = lazy.symbolize(module, a);
        let w = whole.symbolize(module, a);
        assert_eq!(l, w, "{} at {a:#x}", module.path);
        named += usize::from(l.iter().any(|f| f.line.is_some()));
    }
    // A module without DWARF (libc without its debug file) has names but no lines.
    if lazy.debug_info(module).has_dwarf() {
        assert!(named > 0, "{}: no line found", module.path);
    }
    assert_eq!(lazy.stats().dwarf_errors, whole.stats().dwarf_errors);
    lazy
}

#[test]
fn multi_unit_programs_named_alike() {
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("plain", &["-O2", "-g"][..]),
        ("dwarf4", &["-O1", "-gdwarf-4"][..]),
        ("lto", &["-O2", "-g", "-flto"][..]),
    ] {
        let exe = build(dir.path(), name, args);
        let module = desc(&exe);
        let addrs = code_addresses(&exe, 20_000);
        let lazy = compare(&module, &addrs);
        let (indexed, parsed) = lazy.lazy_units();
        if name != "lto" {
            // Three units of ours (plus any from the C runtime), all read on demand.
            assert!(indexed >= 3, "{name}: {indexed} units indexed");
            assert!(parsed <= indexed);
        }
    }
}

#[test]
fn one_address_parses_one_unit() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build(dir.path(), "plain", &["-O2", "-g"]);
    let module = desc(&exe);
    let data = std::fs::read(&exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    use object::ObjectSymbol;
    let unit_b = file
        .symbols()
        .find(|s| s.name() == Ok("unit_b"))
        .unwrap()
        .address();
    let mut sym = Symbolizer::new(Vec::new());
    let frames = sym.symbolize(&module, unit_b);
    assert_eq!(frames.last().unwrap().function.as_deref(), Some("unit_b"));
    assert!(
        frames
            .last()
            .unwrap()
            .file
            .as_deref()
            .unwrap()
            .ends_with("b.c")
    );
    let (indexed, parsed) = sym.lazy_units();
    assert!(indexed >= 3, "{indexed}");
    assert_eq!(parsed, 1, "one unit parsed of {indexed}");
}

#[test]
fn fixtures_named_alike() {
    for name in ["c_workers", "cpp_app", "rust_app_v0", "deep_recursion"] {
        let path = common::fixture_path(name);
        compare(&desc(&path), &code_addresses(&path, 20_000));
    }
}

/// The system's libc (the one this test runs with), through its separate debug file when
/// one is installed.
#[test]
fn libc_named_alike() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let Some(path) = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
    else {
        common::skip("no libc mapped in this process (a static build?)");
        return;
    };
    let path = Path::new(path);
    let module = desc(path);
    let mut lazy = compare(&module, &code_addresses(path, 20_000));
    if !lazy.debug_info(&module).has_dwarf() {
        common::skip(&format!(
            "no debug file for {}: its symbol names were compared, not its DWARF",
            path.display()
        ));
    }
}
