//! Issue 9, "profile truth": names that outlive the target, library swaps seen at once,
//! every C++ name readable, roots of fresh threads, JIT code named from perf maps, and
//! `in_app` decided per frame. Each test names the part of the issue it checks.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use object::{Object, ObjectSymbol, SymbolKind};
use profiler::symbolize::{Symbolizer, looks_mangled};

// ---------------------------------------------------------------- part 3: C++ names

/// `c++filt`'s reading of each name (one process for all), or None without `c++filt`.
fn cppfilt(names: &[String]) -> Option<Vec<String>> {
    if names.is_empty() {
        return Some(Vec::new());
    }
    let mut child = Command::new("c++filt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take().unwrap();
    let input = names.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().ok()?;
    writer.join().unwrap().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    (lines.len() == names.len()).then_some(lines)
}

/// Function symbols (`.symtab` and `.dynsym`) of an ELF file: address -> raw names.
fn function_symbols(path: &Path) -> BTreeMap<u64, Vec<String>> {
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        if sym.kind() != SymbolKind::Text || sym.address() == 0 || sym.is_undefined() {
            continue;
        }
        if let Ok(name) = sym.name()
            && !name.is_empty()
        {
            out.entry(sym.address()).or_default().push(name.to_string());
        }
    }
    out
}

/// The C++ runtime library the C++ fixtures are linked with.
fn libstdcxx() -> Option<PathBuf> {
    let out = Command::new("g++")
        .arg("-print-file-name=libstdc++.so.6")
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let p = p.canonicalize().ok()?;
    p.is_absolute().then_some(p)
}

/// Names every function symbol of `path` through the symbolizer; returns (functions
/// checked, names shown mangled although c++filt reads them).
fn mangled_names_cppfilt_reads(path: &Path) -> Option<(usize, Vec<String>)> {
    let symbols = function_symbols(path);
    let desc = common::module_desc(path);
    let mut sym = Symbolizer::new(vec![]);
    let mut shown_mangled = BTreeSet::new();
    for &addr in symbols.keys() {
        for f in sym.symbolize(&desc, addr) {
            if let Some(name) = f.function
                && looks_mangled(&name)
            {
                shown_mangled.insert(name);
            }
        }
    }
    let shown: Vec<String> = shown_mangled.into_iter().collect();
    let read = cppfilt(&shown)?;
    let bad = shown
        .into_iter()
        .zip(read)
        .filter(|(raw, filtered)| raw != filtered)
        .map(|(raw, filtered)| format!("{raw} (c++filt: {filtered})"))
        .collect();
    Some((symbols.len(), bad))
}

#[test]
fn issue9_part3_cpp_names_cppfilt_reads_are_never_shown_mangled() {
    profiler::os::demangle::install();
    if Command::new("c++filt").arg("--version").output().is_err() {
        eprintln!("SKIPPED: c++filt is not installed (binutils)");
        return;
    }
    let mut files = vec![common::fixture_path("cpp_app")];
    match libstdcxx() {
        Some(p) => files.push(p),
        None => eprintln!("libstdc++.so.6 not found with g++: checking the fixtures only"),
    }
    for file in files {
        let (checked, bad) = mangled_names_cppfilt_reads(&file).expect("c++filt ran");
        eprintln!(
            "{}: {checked} function addresses, {} names shown mangled that c++filt reads",
            file.display(),
            bad.len()
        );
        assert!(checked > 50, "{}: only {checked} functions", file.display());
        assert!(bad.is_empty(), "{}:\n{}", file.display(), bad.join("\n"));
    }
}

// ---------------------------------------------------------------- running the agent

/// Live tests run one at a time (each keeps CPU-bound fixtures busy on a small machine).
static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn live() -> std::sync::MutexGuard<'static, ()> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `profiler` with `args`; returns its stderr, after checking it succeeded.
fn profiler(args: &[String]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_profiler"))
        .args(args)
        .env_remove("SENTRY_DSN")
        .stdin(Stdio::null())
        .output()
        .expect("run the profiler");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "profiler failed:\n{err}");
    err
}

fn attach_args(pid: i32, hz: u32, secs: Option<f64>, outputs: &[&Path]) -> Vec<String> {
    let mut a: Vec<String> = ["attach", "--pid", &pid.to_string(), "-F", &hz.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(s) = secs {
        a.extend(["--duration".to_string(), s.to_string()]);
    }
    for o in outputs {
        let mut s = o.display().to_string();
        if o.extension().is_none() && !s.ends_with('/') {
            s.push('/');
        }
        a.extend(["--output".to_string(), s]);
    }
    a
}

/// The chunks (payload JSON) of the envelopes in `dir`.
fn read_chunks(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        let env = profiler::sentry_format::envelope::parse_envelope(&bytes).unwrap();
        for item in env.items {
            out.push(serde_json::from_slice(&item.payload).unwrap());
        }
    }
    out
}

// ---------------------------------------------------------------- part 6: in_app per frame

/// True when the function's qualified name starts with `prefix`: at the start, or after a
/// C++ return type (a space outside template brackets).
fn named_in(function: &str, prefix: &str) -> bool {
    function.match_indices(prefix).any(|(i, _)| {
        let before = &function[..i];
        i == 0
            || (before.ends_with(' ') && before.matches('<').count() == before.matches('>').count())
    })
}

/// Standard library code by the names and paths the issue lists (independent of the
/// agent's own rule).
fn is_std_frame(function: &str, file: &str) -> bool {
    [
        "std::",
        "core::",
        "alloc::",
        "__gnu_cxx::",
        "<std::",
        "<core::",
        "<alloc::",
    ]
    .iter()
    .any(|p| function.starts_with(p))
        || file.starts_with("/rustc/")
        || file.starts_with("/usr/include/c++/")
}

/// Sentry frames of the fixture's executable in a short session: (std frames in_app,
/// fixture frames not in_app, std frames seen, fixture frames seen).
fn in_app_of(fixture: &str, own_prefix: &str) -> (Vec<String>, Vec<String>, usize, usize) {
    let fx = common::Fixture::spawn(fixture, &[]);
    let exe = std::fs::canonicalize(common::fixture_path(fixture)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    profiler(&attach_args(fx.pid(), 200, Some(1.5), &[dir.path()]));
    let (mut std_in_app, mut own_not_in_app, mut std_seen, mut own_seen) =
        (Vec::new(), Vec::new(), 0, 0);
    for c in read_chunks(dir.path()) {
        for fr in c["profile"]["frames"].as_array().unwrap() {
            if fr["package"].as_str() != Some(exe.to_str().unwrap()) {
                continue;
            }
            let function = fr["function"].as_str().unwrap_or("");
            let file = fr["filename"].as_str().unwrap_or("");
            let in_app = fr["in_app"].as_bool().unwrap();
            if named_in(function, own_prefix) {
                own_seen += 1;
                if !in_app {
                    own_not_in_app.push(format!("{function} ({file})"));
                }
            } else if is_std_frame(function, file) {
                std_seen += 1;
                if in_app {
                    std_in_app.push(format!("{function} ({file})"));
                }
            }
        }
    }
    (std_in_app, own_not_in_app, std_seen, own_seen)
}

#[test]
fn issue9_part6_standard_library_frames_are_not_app_code() {
    let _l = live();
    for (fixture, own) in [("rust_app_v0", "rust_app::"), ("cpp_app", "app::")] {
        let (std_in_app, own_not, std_seen, own_seen) = in_app_of(fixture, own);
        eprintln!("{fixture}: {std_seen} std frames, {own_seen} fixture frames");
        assert!(
            std_seen > 0 && own_seen > 0,
            "{fixture}: {std_seen} std, {own_seen} own frames"
        );
        assert!(
            std_in_app.is_empty(),
            "{fixture}: std frames in_app: {std_in_app:#?}"
        );
        assert!(
            own_not.is_empty(),
            "{fixture}: fixture frames not in_app: {own_not:#?}"
        );
    }
}
