//! Symbolizing real ELF files built here with the system C/C++ compiler: inlined frames,
//! C++ demangling, separate debug files (build-id directories and `.gnu_debuglink`, with
//! their checks), symbol table fallbacks and corrupt files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use object::{Object, ObjectSection, ObjectSymbol};
use profiler::symbolize::{DebugInfo, ModuleDesc, SymFrame, Symbolizer, looks_mangled};

const C_SOURCE: &str = r#"#include <stdio.h>

static inline __attribute__((always_inline)) int helper(int x) {
    int acc = 1;
    for (int i = 0; i < x; i++) {
        acc = acc * 31 + (i ^ (acc >> 7)); /* HELPER_LINE */
    }
    return acc;
}

__attribute__((noinline)) int outer(int n) {
    int r = helper(n); /* CALL_LINE */
    return r + 1;
}

int main(int argc, char **argv) {
    (void)argv;
    printf("%d\n", outer(argc * 1000));
    return 0;
}
"#;

const CPP_SOURCE: &str = r#"#include <cstdio>
#include <vector>

namespace app {
namespace engine {
template <typename T> struct Accumulator {
    T total{};
    __attribute__((noinline)) T run(const std::vector<T>& v) {
        for (auto x : v) total += x * x;
        return total;
    }
};
} // namespace engine
} // namespace app

namespace {
__attribute__((noinline)) int anon_helper(int x) { return x * 3 + 1; }
} // namespace

int main(int argc, char**) {
    app::engine::Accumulator<int> acc;
    std::vector<int> v(argc * 100, argc);
    auto lambda = [&](int k) __attribute__((noinline)) { return acc.run(v) + k; };
    std::printf("%d\n", lambda(anon_helper(argc)));
    return 0;
}
"#;

const LIB_SOURCE: &str = r#"
__attribute__((noinline)) static int demo_static(int x) {
    int acc = 0;
    for (int i = 0; i < x; i++) acc += i * x;
    return acc;
}

__attribute__((noinline)) int demo_exported(int x) {
    return demo_static(x) + 3;
}
"#;

/// Compile `source` (file name `name`) with `compiler` and `args` into `dir`; returns the
/// output path.
fn compile(
    dir: &Path,
    compiler: &str,
    name: &str,
    source: &str,
    out: &str,
    args: &[&str],
) -> PathBuf {
    let src = dir.join(name);
    std::fs::write(&src, source).unwrap();
    let out = dir.join(out);
    let link_args: &[&str] = if compiler == "rustc" {
        &["-C", "link-arg=-Wl,--build-id"]
    } else {
        &["-Wl,--build-id"]
    };
    let status = Command::new(compiler)
        .current_dir(dir)
        .args(args)
        .args(link_args)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(status.success(), "{compiler} failed on {name}");
    out
}

fn run(program: &str, args: &[&std::ffi::OsStr]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

fn desc(path: &Path) -> ModuleDesc {
    common::module_desc(path)
}

fn desc_from_bytes(path: &str, data: Vec<u8>) -> ModuleDesc {
    ModuleDesc {
        path: path.to_string(),
        data: Bytes::from_owner(data),
        build_id: None,
        root: "/".into(),
    }
}

/// The 1-based line of the source line containing `marker`.
fn line_of(source: &str, marker: &str) -> u32 {
    source
        .lines()
        .position(|l| l.contains(marker))
        .map(|i| i as u32 + 1)
        .unwrap_or_else(|| panic!("{marker} not in source"))
}

/// Address and size of the symbol `name` in `path`'s `.symtab`.
fn symbol(path: &Path, name: &str) -> (u64, u64) {
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("{name} not in {}", path.display()));
    (sym.address(), sym.size())
}

/// Every mangled function symbol of `path` with its address.
fn function_symbols(path: &Path) -> Vec<(String, u64)> {
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    file.symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.is_definition() && s.size() > 0)
        .map(|s| (s.name().unwrap().to_string(), s.address()))
        .collect()
}

/// Addresses whose line table row says `line`, from binutils' own DWARF decoder.
fn addresses_of_line(path: &Path, line: u32) -> Vec<u64> {
    let out = Command::new("objdump")
        .arg("--dwarf=decodedline")
        .arg(path)
        .output()
        .expect("objdump");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut addrs = Vec::new();
    for row in text.lines() {
        let cols: Vec<&str> = row.split_whitespace().collect();
        if cols.len() >= 3
            && cols[1].parse::<u32>() == Ok(line)
            && let Some(hex) = cols[2].strip_prefix("0x")
            && let Ok(addr) = u64::from_str_radix(hex, 16)
        {
            addrs.push(addr);
        }
    }
    addrs
}

fn file_is(frame: &SymFrame, name: &str) -> bool {
    frame
        .file
        .as_deref()
        .is_some_and(|f| Path::new(f).is_absolute() && f.ends_with(&format!("/{name}")))
}

/// A C program with a helper inlined into `outer`: the helper's loop body addresses.
struct CProgram {
    _dir: tempfile::TempDir,
    exe: PathBuf,
    helper_addrs: Vec<u64>,
    outer: (u64, u64),
}

fn c_program(extra: &[&str]) -> CProgram {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["-O2", "-g", "-fno-omit-frame-pointer"];
    args.extend_from_slice(extra);
    let exe = compile(dir.path(), "cc", "inl.c", C_SOURCE, "inl", &args);
    let outer = symbol(&exe, "outer");
    let helper_line = line_of(C_SOURCE, "HELPER_LINE");
    let helper_addrs: Vec<u64> = addresses_of_line(&exe, helper_line)
        .into_iter()
        .filter(|a| *a >= outer.0 && *a < outer.0 + outer.1)
        .collect();
    assert!(
        !helper_addrs.is_empty(),
        "helper line not found inside outer"
    );
    CProgram {
        _dir: dir,
        exe,
        helper_addrs,
        outer,
    }
}

fn assert_inlined_frames(frames: &[SymFrame], addr: u64) {
    let helper_line = line_of(C_SOURCE, "HELPER_LINE");
    let call_line = line_of(C_SOURCE, "CALL_LINE");
    assert_eq!(frames.len(), 2, "{addr:#x}: {frames:?}");
    assert_eq!(frames[0].function.as_deref(), Some("helper"), "{frames:?}");
    assert!(frames[0].inlined);
    assert_eq!(frames[0].line, Some(helper_line), "{frames:?}");
    assert!(file_is(&frames[0], "inl.c"), "{frames:?}");
    assert_eq!(frames[1].function.as_deref(), Some("outer"), "{frames:?}");
    assert!(!frames[1].inlined);
    assert_eq!(frames[1].line, Some(call_line), "{frames:?}");
    assert!(file_is(&frames[1], "inl.c"), "{frames:?}");
}

#[test]
fn c_inlined_frames_innermost_first() {
    let prog = c_program(&[]);
    let module = desc(&prog.exe);
    let mut sym = Symbolizer::new(Vec::new());
    assert_eq!(sym.debug_info(&module), DebugInfo::Embedded);
    for &addr in &prog.helper_addrs {
        assert_inlined_frames(&sym.symbolize(&module, addr), addr);
    }
    // Every address of `outer` ends in `outer` itself (not inlined) at the call line or
    // in its own lines; frames before it are inlined.
    let call_line = line_of(C_SOURCE, "CALL_LINE");
    for addr in prog.outer.0..prog.outer.0 + prog.outer.1 {
        let frames = sym.symbolize(&module, addr);
        let (last, inner) = frames.split_last().expect("outer names all its bytes");
        assert_eq!(
            last.function.as_deref(),
            Some("outer"),
            "{addr:#x}: {frames:?}"
        );
        assert!(!last.inlined);
        assert!(file_is(last, "inl.c"));
        assert!(
            inner
                .iter()
                .all(|f| f.inlined && f.function.as_deref() == Some("helper"))
        );
        if !inner.is_empty() {
            assert_eq!(last.line, Some(call_line));
        }
    }
    // Cached answers are the same answers.
    let before = sym.stats();
    let again = sym.symbolize(&module, prog.helper_addrs[0]);
    assert_inlined_frames(&again, prog.helper_addrs[0]);
    assert_eq!(sym.stats().cache_hits, before.cache_hits + 1);
    assert_eq!(sym.stats().modules_loaded, 1);
}

#[test]
fn compressed_debug_sections() {
    // `-gz` compresses the DWARF sections (SHF_COMPRESSED).
    let prog = c_program(&["-gz"]);
    let data = std::fs::read(&prog.exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let info = file.section_by_name(".debug_info").unwrap();
    let range = info.compressed_file_range().unwrap();
    assert_ne!(
        range.format,
        object::CompressionFormat::None,
        "not compressed"
    );
    let module = desc(&prog.exe);
    let mut sym = Symbolizer::new(Vec::new());
    for &addr in &prog.helper_addrs {
        assert_inlined_frames(&sym.symbolize(&module, addr), addr);
    }
}

#[test]
fn split_dwarf_dwo_files() {
    let prog = c_program(&["-gsplit-dwarf"]);
    let dir = prog.exe.parent().unwrap();
    let dwo: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dwo"))
        .collect();
    assert_eq!(dwo.len(), 1, "{dwo:?}");
    let module = desc(&prog.exe);
    let mut sym = Symbolizer::new(Vec::new());
    for &addr in &prog.helper_addrs {
        assert_inlined_frames(&sym.symbolize(&module, addr), addr);
    }
    // Without the .dwo: the skeleton's line table still gives file and line, the symbol
    // table the function.
    std::fs::remove_file(&dwo[0]).unwrap();
    let mut sym = Symbolizer::new(Vec::new());
    let frames = sym.symbolize(&module, prog.helper_addrs[0]);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].function.as_deref(), Some("outer"));
    assert_eq!(frames[0].line, Some(line_of(C_SOURCE, "HELPER_LINE")));
    assert!(file_is(&frames[0], "inl.c"));
}

/// Split `exe` into a stripped binary and a debug file in `dir`. Returns (stripped, debug).
fn split_debug(exe: &Path, dir: &Path, stripped_name: &str) -> (PathBuf, PathBuf) {
    let debug = dir.join(format!("{stripped_name}.debug"));
    let stripped = dir.join(stripped_name);
    run(
        "objcopy",
        &[
            "--only-keep-debug".as_ref(),
            exe.as_os_str(),
            debug.as_os_str(),
        ],
    );
    run(
        "strip",
        &[
            "--strip-all".as_ref(),
            "-o".as_ref(),
            stripped.as_os_str(),
            exe.as_os_str(),
        ],
    );
    (stripped, debug)
}

fn build_id_path(debug_root: &Path, build_id: &[u8]) -> PathBuf {
    let hex = profiler::elf::hex(build_id);
    debug_root
        .join(".build-id")
        .join(&hex[..2])
        .join(format!("{}.debug", &hex[2..]))
}

#[test]
fn separate_debug_file_by_build_id() {
    let prog = c_program(&[]);
    let work = tempfile::tempdir().unwrap();
    let (stripped, debug) = split_debug(&prog.exe, work.path(), "inl");
    let module = desc(&stripped);
    let build_id = module.build_id.clone().expect("build-id");

    // Without the debug file: only nothing (static functions, no .dynsym entry for them).
    let mut bare = Symbolizer::new(Vec::new());
    assert!(bare.symbolize(&module, prog.helper_addrs[0]).is_empty());
    assert!(!bare.debug_info(&module).has_dwarf());

    let debug_root = work.path().join("debug");
    let target = build_id_path(&debug_root, &build_id);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(&debug, &target).unwrap();
    let mut sym = Symbolizer::new(vec![debug_root.clone()]);
    assert_eq!(sym.debug_info(&module), DebugInfo::BuildId(target.clone()));
    for &addr in &prog.helper_addrs {
        assert_inlined_frames(&sym.symbolize(&module, addr), addr);
    }

    // The same layout inside the target's root is found without any debug directory.
    let root = work.path().join("root");
    let in_root = build_id_path(&root.join("usr/lib/debug"), &build_id);
    std::fs::create_dir_all(in_root.parent().unwrap()).unwrap();
    std::fs::copy(&debug, &in_root).unwrap();
    let mut rooted = Symbolizer::new(Vec::new());
    let module_in_root = ModuleDesc {
        root: root.as_path().into(),
        ..module.clone()
    };
    assert_eq!(
        rooted.debug_info(&module_in_root),
        DebugInfo::BuildId(in_root)
    );
    assert_inlined_frames(
        &rooted.symbolize(&module_in_root, prog.helper_addrs[0]),
        prog.helper_addrs[0],
    );
}

#[test]
fn build_id_file_with_other_build_id_rejected() {
    let prog = c_program(&[]);
    // Another program (different build-id) put at this program's build-id path.
    let other = c_program(&["-DOTHER=1", "-O1"]);
    let work = tempfile::tempdir().unwrap();
    let (stripped, _) = split_debug(&prog.exe, work.path(), "inl");
    let (_, other_debug) = split_debug(&other.exe, work.path(), "other");
    let module = desc(&stripped);
    let build_id = module.build_id.clone().unwrap();
    assert_ne!(desc(&other.exe).build_id, Some(build_id.clone()));
    let debug_root = work.path().join("debug");
    let target = build_id_path(&debug_root, &build_id);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(&other_debug, &target).unwrap();
    let mut sym = Symbolizer::new(vec![debug_root]);
    assert!(!sym.debug_info(&module).has_dwarf());
    assert!(sym.symbolize(&module, prog.helper_addrs[0]).is_empty());
}

#[test]
fn separate_debug_file_by_debuglink() {
    let prog = c_program(&[]);
    let work = tempfile::tempdir().unwrap();
    let (stripped, debug) = split_debug(&prog.exe, work.path(), "inl");
    // Give the stripped binary a debuglink, keep it next to its debug file.
    let linked = work.path().join("inl.linked");
    run(
        "objcopy",
        &[
            format!("--add-gnu-debuglink={}", debug.display()).as_ref(),
            stripped.as_os_str(),
            linked.as_os_str(),
        ],
    );
    let module = desc(&linked);
    let mut sym = Symbolizer::new(Vec::new());
    assert_eq!(sym.debug_info(&module), DebugInfo::DebugLink(debug.clone()));
    for &addr in &prog.helper_addrs {
        assert_inlined_frames(&sym.symbolize(&module, addr), addr);
    }

    // In `.debug/` next to the binary, after the binary moved elsewhere.
    let other_dir = work.path().join("bin");
    std::fs::create_dir_all(other_dir.join(".debug")).unwrap();
    let moved = other_dir.join("inl.linked");
    std::fs::copy(&linked, &moved).unwrap();
    let in_dot_debug = other_dir.join(".debug").join("inl.debug");
    std::fs::copy(&debug, &in_dot_debug).unwrap();
    let module = desc(&moved);
    let mut sym = Symbolizer::new(Vec::new());
    assert_eq!(
        sym.debug_info(&module),
        DebugInfo::DebugLink(in_dot_debug.clone())
    );
    assert_inlined_frames(
        &sym.symbolize(&module, prog.helper_addrs[0]),
        prog.helper_addrs[0],
    );

    // A file of that name whose CRC differs is not used.
    let mut wrong = std::fs::read(&debug).unwrap();
    wrong.extend_from_slice(b"tampered");
    std::fs::write(&in_dot_debug, wrong).unwrap();
    let mut sym = Symbolizer::new(Vec::new());
    assert!(
        !sym.debug_info(&module).has_dwarf(),
        "{:?}",
        sym.debug_info(&module)
    );
    assert!(sym.symbolize(&module, prog.helper_addrs[0]).is_empty());
}

#[test]
fn symtab_names_without_dwarf() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "cc", "inl.c", C_SOURCE, "inl", &["-O2", "-g0"]);
    let module = desc(&exe);
    let data = std::fs::read(&exe).unwrap();
    assert!(
        object::File::parse(&*data)
            .unwrap()
            .section_by_name(".debug_info")
            .is_none()
    );
    let (outer, size) = symbol(&exe, "outer");
    let mut sym = Symbolizer::new(Vec::new());
    assert_eq!(sym.debug_info(&module), DebugInfo::SymbolsOnly);
    for addr in [outer, outer + size / 2, outer + size - 1] {
        assert_eq!(
            sym.symbolize(&module, addr),
            vec![SymFrame {
                function: Some("outer".into()),
                file: None,
                line: None,
                inlined: false
            }]
        );
    }
    // Just past a sized symbol (in padding before the next function) names nothing from it.
    let past = sym.symbolize(&module, outer + size);
    assert!(
        past.iter().all(|f| f.function.as_deref() != Some("outer")),
        "{past:?}"
    );
}

#[test]
fn stripped_library_names_exports_from_dynsym() {
    let dir = tempfile::tempdir().unwrap();
    let lib = compile(
        dir.path(),
        "cc",
        "lib.c",
        LIB_SOURCE,
        "libdemo.so",
        &["-O2", "-g", "-shared", "-fPIC"],
    );
    let (exported, _) = symbol(&lib, "demo_exported");
    let (statik, static_size) = symbol(&lib, "demo_static");
    let stripped = dir.path().join("libdemo.stripped.so");
    run(
        "strip",
        &[
            "--strip-all".as_ref(),
            "-o".as_ref(),
            stripped.as_os_str(),
            lib.as_os_str(),
        ],
    );
    let module = desc(&stripped);
    let mut sym = Symbolizer::new(Vec::new());
    assert_eq!(sym.debug_info(&module), DebugInfo::SymbolsOnly);
    let frames = sym.symbolize(&module, exported + 2);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].function.as_deref(), Some("demo_exported"));
    assert_eq!(frames[0].file, None);
    for addr in [statik, statik + static_size / 2] {
        let frames = sym.symbolize(&module, addr);
        assert!(
            frames.is_empty(),
            "static function named from .dynsym: {frames:?}"
        );
    }
    // The unstripped library names both, with files.
    let full = desc(&lib);
    let frames = sym.symbolize(&full, statik);
    assert_eq!(
        frames.last().unwrap().function.as_deref(),
        Some("demo_static")
    );
    assert!(file_is(frames.last().unwrap(), "lib.c"));
}

/// A predicate on a demangled name.
type NameCheck = dyn Fn(&str) -> bool;

#[test]
fn cpp_names_demangled_with_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(
        dir.path(),
        "c++",
        "prog.cpp",
        CPP_SOURCE,
        "prog",
        &["-O2", "-g"],
    );
    let work = tempfile::tempdir().unwrap();
    let (stripped, debug) = split_debug(&exe, work.path(), "prog");
    let module = desc(&exe);
    let build_id = module.build_id.clone().unwrap();
    let debug_root = work.path().join("debug");
    let target = build_id_path(&debug_root, &build_id);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(&debug, &target).unwrap();
    let split = desc(&stripped);

    let expectations: [(&str, &NameCheck); 3] = [
        ("Accumulator", &|n: &str| {
            n.starts_with("app::engine::Accumulator<int>::run(")
        }),
        ("anon_helper", &|n: &str| {
            n == "(anonymous namespace)::anon_helper(int)"
        }),
        ("UliE_", &|n: &str| {
            n.starts_with("main::{lambda(int)#1}::operator()(int) const")
        }),
    ];
    let symbols = function_symbols(&exe);
    for module in [&module, &split] {
        let mut sym = Symbolizer::new(vec![debug_root.clone()]);
        assert!(sym.debug_info(module).has_dwarf());
        for (needle, check) in &expectations {
            let (mangled, addr) = symbols
                .iter()
                .find(|(n, _)| n.starts_with("_Z") && n.contains(needle))
                .unwrap_or_else(|| panic!("no symbol with {needle}: {symbols:?}"));
            let frames = sym.symbolize(module, *addr);
            let outer = frames
                .last()
                .unwrap_or_else(|| panic!("nothing for {mangled}"));
            let name = outer.function.as_deref().unwrap();
            assert!(check(name), "{mangled} -> {name}");
            assert!(file_is(outer, "prog.cpp"), "{frames:?}");
            assert!(outer.line.is_some());
        }
        // Every function of the program (including libstdc++ template code) has a readable
        // name, never a mangled one.
        for (mangled, addr) in &symbols {
            for frame in sym.symbolize(module, *addr) {
                let name = frame.function.unwrap_or_default();
                assert!(!looks_mangled(&name), "{mangled} -> {name}");
            }
        }
    }
}

fn corrupt_cases() -> Vec<(&'static str, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "cc", "inl.c", C_SOURCE, "inl", &["-O2", "-g"]);
    let good = std::fs::read(&exe).unwrap();
    let mut cases = vec![
        ("truncated header", good[..40].to_vec()),
        ("truncated half", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    cases.push(("random", (0..64 * 1024).map(|_| rng.u8(..)).collect()));
    let mut elf_random = good[..64].to_vec();
    elf_random.extend((0..64 * 1024).map(|_| rng.u8(..)));
    cases.push(("ELF header then random", elf_random));
    for (label, fill) in [("debug_info 0xff", None), ("debug_info random", Some(3u64))] {
        let mut bad = good.clone();
        for section in [".debug_info", ".debug_abbrev", ".debug_line"] {
            let file = object::File::parse(&*good).unwrap();
            let (off, len) = file.section_by_name(section).unwrap().file_range().unwrap();
            let mut rng = fill.map(fastrand::Rng::with_seed);
            for b in &mut bad[off as usize..(off + len) as usize] {
                *b = rng.as_mut().map_or(0xff, |r| r.u8(..));
            }
        }
        cases.push((label, bad));
    }
    cases
}

#[test]
fn corrupt_files_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "cc", "inl.c", C_SOURCE, "inl", &["-O2", "-g"]);
    let (outer, size) = symbol(&exe, "outer");
    let mut sym = Symbolizer::new(Vec::new());
    for (label, data) in corrupt_cases() {
        let module = desc_from_bytes(&format!("/nonexistent/{}", label.replace(' ', "_")), data);
        for addr in (0..0x4000u64).step_by(7).chain(outer..outer + size) {
            let _ = sym.symbolize(&module, addr);
        }
        if label.starts_with("debug_info") {
            // The symbol table is intact: `outer` is still named.
            let frames = sym.symbolize(&module, outer + 1);
            assert_eq!(
                frames.last().and_then(|f| f.function.as_deref()),
                Some("outer"),
                "{label}: {frames:?}"
            );
        }
    }
}

#[test]
fn module_cache_is_bounded() {
    let prog = c_program(&[]);
    let dir = tempfile::tempdir().unwrap();
    let lib = compile(
        dir.path(),
        "cc",
        "lib.c",
        LIB_SOURCE,
        "libdemo.so",
        &["-O2", "-g", "-shared", "-fPIC"],
    );
    let (exported, _) = symbol(&lib, "demo_exported");
    let a = desc(&prog.exe);
    let b = desc(&lib);
    let mut sym = Symbolizer::new(Vec::new());
    sym.set_max_modules(1);
    for round in 0..3u64 {
        // Distinct addresses each round so the address cache cannot answer.
        let frames = sym.symbolize(&a, prog.outer.0 + round);
        assert_eq!(frames.last().unwrap().function.as_deref(), Some("outer"));
        let frames = sym.symbolize(&b, exported + round);
        assert_eq!(
            frames.last().unwrap().function.as_deref(),
            Some("demo_exported")
        );
    }
    let stats = sym.stats();
    assert_eq!(stats.modules_loaded, 6);
    assert_eq!(stats.modules_evicted, 5);
}

const RUST_SOURCE: &str = r#"mod app {
    pub mod engine {
        pub struct Acc(pub Vec<u64>);
        impl Acc {
            #[inline(never)]
            pub fn run(&self) -> u64 {
                self.0.iter().map(|x| x * x).sum()
            }
        }
    }
}
fn main() {
    let n = std::env::args().count() as u64 * 100;
    let a = app::engine::Acc((0..n).collect());
    println!("{}", a.run());
}
"#;

#[test]
fn rust_line_tables_only_names_qualified_from_symtab() {
    // With line-tables-only DWARF, rustc emits bare names (`run`) without linkage names:
    // the symbol table supplies the full path for the outermost frame.
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(
        dir.path(),
        "rustc",
        "lto.rs",
        RUST_SOURCE,
        "lto",
        &["-O", "-C", "debuginfo=line-tables-only"],
    );
    let (mangled, addr) = function_symbols(&exe)
        .into_iter()
        .find(|(n, _)| n.contains("3Acc3run"))
        .expect("Acc::run symbol");
    let module = desc(&exe);
    let mut sym = Symbolizer::new(Vec::new());
    assert_eq!(sym.debug_info(&module), DebugInfo::Embedded);
    let (_, size) = symbol(&exe, &mangled);
    let mut saw_inlined = false;
    for a in addr..addr + size {
        let frames = sym.symbolize(&module, a);
        let (outer, inner) = frames.split_last().expect("named");
        assert_eq!(
            outer.function.as_deref(),
            Some("lto::app::engine::Acc::run"),
            "{frames:?}"
        );
        if a == addr {
            assert!(file_is(outer, "lto.rs"), "{frames:?}");
        }
        saw_inlined |= !inner.is_empty();
        for f in &frames {
            assert!(
                !looks_mangled(f.function.as_deref().unwrap_or("")),
                "{frames:?}"
            );
        }
    }
    assert!(saw_inlined, "iterator code should be inlined into run");
}

#[test]
fn rust_v0_mangled_program() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(
        dir.path(),
        "rustc",
        "vzero.rs",
        RUST_SOURCE,
        "vzero",
        &["-O", "-g", "-C", "symbol-mangling-version=v0"],
    );
    let symbols = function_symbols(&exe);
    let (mangled, addr) = symbols
        .iter()
        .find(|(n, _)| n.starts_with("_R") && n.contains("3Acc3run"))
        .expect("v0-mangled Acc::run symbol");
    let module = desc(&exe);
    let mut sym = Symbolizer::new(Vec::new());
    let frames = sym.symbolize(&module, *addr);
    let outer = frames.last().expect("named");
    assert_eq!(
        outer.function.as_deref(),
        Some("<vzero::app::engine::Acc>::run"),
        "{mangled}"
    );
    assert!(file_is(outer, "vzero.rs"));
    // The same without DWARF: the v0 symbol itself, demangled without disambiguators.
    let stripped = dir.path().join("vzero.nodebug");
    run(
        "strip",
        &[
            "--strip-debug".as_ref(),
            "-o".as_ref(),
            stripped.as_os_str(),
            exe.as_os_str(),
        ],
    );
    let module = desc(&stripped);
    let frames = sym.symbolize(&module, *addr);
    assert_eq!(frames.len(), 1);
    assert_eq!(
        frames[0].function.as_deref(),
        Some("<vzero::app::engine::Acc>::run")
    );
    assert_eq!(frames[0].file, None);
    for (name, addr) in symbols
        .iter()
        .filter(|(n, _)| n.starts_with("_R"))
        .take(300)
    {
        for frame in sym.symbolize(&module, *addr) {
            let f = frame.function.unwrap_or_default();
            assert!(
                !looks_mangled(&f) && !has_disambiguator(&f),
                "{name} -> {f}"
            );
        }
    }
}

/// True when `name` holds a v0 crate disambiguator such as `[1a2b3c4d]`.
fn has_disambiguator(name: &str) -> bool {
    name.split('[').skip(1).any(|rest| {
        rest.split_once(']').is_some_and(|(inside, _)| {
            !inside.is_empty() && inside.bytes().all(|b| b.is_ascii_hexdigit())
        })
    })
}
