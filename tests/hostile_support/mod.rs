//! Shared helpers of the `hostile_*` tests: property-test configuration (a bounded case
//! count by default, many more with `PROFILER_FUZZ_CASES`), a per-thread panic counter
//! (the symbolizer catches panics, so "no panic" must be observed through the hook), small
//! real ELF programs compiled here with the system C compiler, section surgery on them,
//! and module sources and module lists for the unwinder.
#![allow(dead_code)]

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use bytes::Bytes;
use object::{Object, ObjectSection, ObjectSymbol};
use profiler::modules::ModuleSource;
use profiler::procmaps::Mapping;
use profiler::unwind::{ModuleRef, UnwindInfo, UnwindModules};
use proptest::test_runner::Config;

/// Property-test cases per test: `PROFILER_FUZZ_CASES` when set (the long fuzz runs of
/// `make fuzz`), else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROFILER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A proptest configuration running [`cases`]`(default)` cases, without persisting
/// failures to files (shrunk failures are printed instead).
pub fn config(default: u32) -> Config {
    Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Iterations of a hand-rolled fuzz loop: `default` scaled like [`cases`] (the env var
/// gives the count for a default of 256).
pub fn iterations(default: u64) -> u64 {
    match std::env::var("PROFILER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(n) => (default * n / 256).max(default),
        None => default,
    }
}

thread_local! {
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

/// Install (once per process) a panic hook that counts panics per thread, then runs the
/// default hook (so messages still show).
pub fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
}

/// Panics seen on this thread since the hook was installed (caught ones included).
pub fn panics_on_this_thread() -> u64 {
    PANICS.with(Cell::get)
}

/// Run `f` and assert it panicked nowhere on this thread, not even inside a
/// `catch_unwind` of the code under test.
pub fn assert_no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    count_panics();
    let before = panics_on_this_thread();
    let out = f();
    let after = panics_on_this_thread();
    assert_eq!(
        after,
        before,
        "{what}: {} panic(s), even if caught",
        after - before
    );
    out
}

/// A C program with a small call chain, an inlined helper, a signal handler and a
/// recursion: small (a few KiB of code) but a real gcc/ld output.
pub const C_SOURCE: &str = r#"#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static inline __attribute__((always_inline)) unsigned helper(unsigned x) {
    unsigned acc = 1;
    for (unsigned i = 0; i < x; i++) acc = acc * 31 + (i ^ (acc >> 7));
    return acc;
}

__attribute__((noinline)) unsigned leaf(unsigned x) { return helper(x) + 1; }

__attribute__((noinline)) unsigned recurse(unsigned n) {
    if (n == 0) return leaf(n + 7);
    return recurse(n - 1) * 3 + 1;
}

static volatile sig_atomic_t hits;
static void on_signal(int s) { hits += s; }

int main(int argc, char **argv) {
    (void)argv;
    signal(SIGUSR1, on_signal);
    printf("%u %d\n", recurse((unsigned)argc * 5), (int)hits);
    return 0;
}
"#;

/// The bytes of [`C_SOURCE`] compiled with `cc` and `flags` (plus a build-id).
pub fn compile_c(flags: &[&str]) -> Vec<u8> {
    compile_source(C_SOURCE, flags)
}

/// [`C_SOURCE`] plus 300 small functions, so that its CFI sections are large enough
/// (several KiB) to be overwritten in place with crafted tables.
pub fn big_source() -> String {
    let mut s = C_SOURCE.replace("int main(", "int real_main(");
    for i in 0..300 {
        s.push_str(&format!(
            "__attribute__((noinline)) int f{i}(int x) {{ return x * {i} + (x >> 3); }}\n"
        ));
    }
    s.push_str("int (*const table[])(int) = {");
    for i in 0..300 {
        s.push_str(&format!("f{i},"));
    }
    s.push_str("};\nint main(int argc, char **argv) { return real_main(argc, argv) + table[argc](argc); }\n");
    s
}

/// The bytes of `source` compiled with `cc` and `flags` (plus a build-id).
pub fn compile_source(source: &str, flags: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("prog.c");
    std::fs::write(&src, source).unwrap();
    let out = dir.path().join("prog");
    let status = Command::new("cc")
        .args(flags)
        .arg("-Wl,--build-id")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("running cc: {e}"));
    assert!(status.success(), "cc {flags:?} failed");
    std::fs::read(&out).unwrap()
}

/// `-O2 -g`: `.eh_frame` with `.eh_frame_hdr`, DWARF 5, `.symtab`.
pub fn program_eh_frame() -> Vec<u8> {
    static P: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    P.get_or_init(|| compile_c(&["-O2", "-g"])).clone()
}

/// `-O2 -g` without unwind tables: the program's own CFI in `.debug_frame`.
pub fn program_debug_frame() -> Vec<u8> {
    static P: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        compile_c(&[
            "-O2",
            "-g",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
        ])
    })
    .clone()
}

/// File range and SVMA of section `name`.
pub fn section(data: &[u8], name: &str) -> Option<(usize, usize, u64)> {
    let file = object::File::parse(data).ok()?;
    let s = file.section_by_name(name)?;
    let (off, len) = s.file_range()?;
    Some((off as usize, len as usize, s.address()))
}

/// SVMA and size of function symbol `name`.
pub fn symbol(data: &[u8], name: &str) -> (u64, u64) {
    let file = object::File::parse(data).unwrap();
    let s = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("no symbol {name}"));
    (s.address(), s.size())
}

/// A copy of `data` whose section `name` is overwritten by `content` (cut to the
/// section's size; the rest of the section zero-filled).
pub fn with_section(data: &[u8], name: &str, content: &[u8]) -> Vec<u8> {
    let (off, len, _) = section(data, name).unwrap_or_else(|| panic!("no section {name}"));
    let mut out = data.to_vec();
    let dst = &mut out[off..off + len];
    dst.fill(0);
    let n = content.len().min(len);
    dst[..n].copy_from_slice(&content[..n]);
    out
}

/// One module at a fixed bias, as the unwinder sees it.
pub struct OneModule {
    /// Its tables.
    pub info: UnwindInfo,
    /// AVMA - SVMA.
    pub bias: u64,
    /// First and one-past-last AVMA covered.
    pub range: (u64, u64),
}

impl OneModule {
    /// Tables of `elf`, mapped at `bias`, covering `[bias, bias + 16 MiB)`.
    pub fn new(elf: Vec<u8>, bias: u64) -> Option<OneModule> {
        let info = UnwindInfo::from_elf(Bytes::from_owner(elf)).ok()?;
        Some(OneModule {
            info,
            bias,
            range: (bias, bias + (16 << 20)),
        })
    }
}

impl UnwindModules for OneModule {
    fn find(&self, avma: u64) -> Option<ModuleRef<'_>> {
        (avma >= self.range.0 && avma < self.range.1).then_some(ModuleRef {
            info: &self.info,
            bias: self.bias,
            id: 1,
        })
    }
}

/// Module files served from memory by path; everything else is unreadable.
pub struct FakeSource(pub Vec<(String, Vec<u8>)>);

impl ModuleSource for FakeSource {
    fn file(&self, mapping: &Mapping) -> Option<Bytes> {
        self.0
            .iter()
            .find(|(p, _)| *p == mapping.path)
            .map(|(_, d)| Bytes::from_owner(d.clone()))
    }
    fn memory(&self, _: &Mapping) -> Option<Bytes> {
        None
    }
    fn root(&self) -> profiler::symbolize::Root {
        PathBuf::from("/nonexistent-root").into()
    }
}

/// The agent's own files, read from disk by path (for the test process's own maps).
pub struct DiskSource;

impl ModuleSource for DiskSource {
    fn file(&self, mapping: &Mapping) -> Option<Bytes> {
        std::fs::read(Path::new(&mapping.path))
            .ok()
            .map(Bytes::from_owner)
    }
    fn memory(&self, _: &Mapping) -> Option<Bytes> {
        None
    }
    fn root(&self) -> profiler::symbolize::Root {
        "/".into()
    }
}

/// The checks every unwind must pass, whatever the input: it returned, the first frame is
/// the exact pc, the count is bounded by `max_frames`, and `MaxDepth` exactly at the limit.
pub fn check_unwind(
    label: &str,
    regs: &profiler::types::Regs,
    frames: &[profiler::types::FrameAddr],
    end: profiler::types::StackEnd,
    max_frames: usize,
) {
    use profiler::types::{FrameAddr, StackEnd};
    assert!(!frames.is_empty(), "{label}: no frame at all");
    assert_eq!(
        frames[0],
        FrameAddr::ip(regs.ip()),
        "{label}: first frame lost"
    );
    assert!(
        frames.len() <= max_frames,
        "{label}: {} frames",
        frames.len()
    );
    assert_eq!(
        end == StackEnd::MaxDepth,
        frames.len() == max_frames,
        "{label}: {end:?} after {} frames",
        frames.len()
    );
}
