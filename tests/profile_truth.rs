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
    let o = common::ptrace_agent()
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
    common::std_library_name(function)
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

// ---------------------------------------------------------------- part 1: names outlive the target

/// Kills a process that is not our child (the first process of a namespace).
struct KillPid(i32);
impl Drop for KillPid {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn root_and_unshare() -> bool {
    nix::unistd::geteuid().is_root()
        && Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Host pid of the process whose parent is `parent` and whose comm is `comm`.
fn child_named(parent: u32, comm: &str) -> Option<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let ppid: u32 = stat[close + 2..]
                .split(' ')
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if ppid == parent && &stat[open + 1..close] == comm {
                return Some(pid);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

/// A stripped `c_workers` laid out one of the ways the issue lists, started so that it
/// exits on its own after `seconds`.
enum Layout {
    /// `.gnu_debuglink` target in `<bindir>/.debug/`.
    DebugDotDir,
    /// `.gnu_debuglink` target next to the binary.
    NextTo,
    /// By build-id, in the target's own `/usr/lib/debug` (another mount namespace, where
    /// the binary too lives on a tmpfs the agent cannot see by path).
    BuildIdInRoot,
}

struct Started {
    pid: i32,
    /// The process to wait for (the namespace's first process, or the target).
    waiter: std::process::Child,
    _kill: KillPid,
    /// Where to read the symbols of the stripped code from (a file with `.symtab`).
    reference: PathBuf,
    _dir: tempfile::TempDir,
}

fn start(layout: &Layout, args: &str) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(bin.join(".debug")).unwrap();
    let (waiter, pid, reference) = match layout {
        Layout::DebugDotDir | Layout::NextTo => {
            let exe = bin.join("stripped_prog");
            std::fs::copy(common::fixture_path("c_workers_stripped_debuglink"), &exe).unwrap();
            let debug = common::fixture_path("c_workers_stripped_debuglink.debug");
            let to = match layout {
                Layout::DebugDotDir => bin.join(".debug"),
                _ => bin.clone(),
            };
            std::fs::copy(&debug, to.join("c_workers_stripped_debuglink.debug")).unwrap();
            let mut child = Command::new(&exe)
                .args(args.split_whitespace())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let pid = child.id() as i32;
            // After its `ready` line it runs the program's code.
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.take().unwrap()),
                &mut line,
            )
            .unwrap();
            assert!(line.starts_with("ready"), "{line}");
            (child, pid, debug)
        }
        Layout::BuildIdInRoot => {
            let hidden = dir.path().display();
            std::fs::create_dir_all("/usr/lib/debug").unwrap();
            let script = format!(
                "set -e; mount -t tmpfs none {hidden}; cp {bin} {hidden}/stripped_prog; \
                 mount -t tmpfs none /usr/lib/debug; cp -r {debug}/.build-id /usr/lib/debug/; \
                 exec {hidden}/stripped_prog {args}",
                bin = common::fixture_path("c_workers_stripped_buildid").display(),
                debug = common::fixture_path("debug").display(),
            );
            let child = Command::new("unshare")
                .args([
                    "--mount",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--propagation",
                    "private",
                ])
                .args(["/bin/sh", "-c", &script])
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let pid = child_named(child.id(), "stripped_prog").expect("target started");
            (child, pid, common::fixture_path("c_workers"))
        }
    };
    Started {
        pid,
        waiter,
        _kill: KillPid(pid),
        reference,
        _dir: dir,
    }
}

/// The file address of function `name` in `reference`'s symbol table.
fn svma_of(reference: &Path, name: &str) -> u64 {
    let data = std::fs::read(reference).unwrap();
    let file = object::File::parse(&*data).unwrap();
    file.symbols()
        .find(|s| s.name() == Ok(name))
        .map(|s| s.address())
        .unwrap_or_else(|| panic!("{name} not in {}", reference.display()))
}

fn layouts() -> Vec<Layout> {
    let mut v = vec![Layout::DebugDotDir, Layout::NextTo];
    if root_and_unshare() {
        v.push(Layout::BuildIdInRoot);
    } else {
        eprintln!("SKIPPED the build-id-in-the-target's-root case: needs root and unshare");
    }
    v
}

/// The pipeline's own pieces against a stripped target: its modules are read while it
/// runs, it exits on its own, and only then are its frames named. Every layout of debug
/// files must still give the names (and the inlined frame) the debug file holds.
#[test]
fn issue9_part1_debug_files_found_after_the_target_exited() {
    use profiler::modules::{ModuleMap, ModuleSource};
    use profiler::pipeline::FrameKey;
    use profiler::pipeline::naming::Namer;
    let _l = live();
    for layout in layouts() {
        let mut t = start(&layout, "--seconds 0.3");
        let files = profiler::os::files::LiveFiles::new(t.pid);
        let maps = profiler::os::proc::read_maps(t.pid).unwrap();
        let mut modules = ModuleMap::new();
        modules.update(&profiler::procmaps::parse(&maps), &files);
        let status = t.waiter.wait().unwrap();
        assert!(
            status.success(),
            "the target did not exit cleanly: {status}"
        );
        assert!(
            !Path::new(&format!("/proc/{}/root", t.pid)).exists(),
            "the target is gone"
        );
        let exe = modules
            .all()
            .iter()
            .find(|m| m.path.ends_with("/stripped_prog"))
            .expect("the executable is a module")
            .clone();
        let mut namer = Namer::new(Symbolizer::new(vec![]));
        for func in ["worker_direct", "worker_indirect", "recurse"] {
            let key = FrameKey {
                module: exe.id,
                addr: exe.bias + svma_of(&t.reference, func) + 4,
                is_return: false,
            };
            let named = namer.name(&key, modules.all());
            let outer = named.last().unwrap();
            assert_eq!(
                outer.function.as_deref(),
                Some(func),
                "{}: {:?}",
                files.root().display(Path::new("/")).display(),
                named
            );
            assert!(outer.line.is_some(), "no line: {named:?}");
        }
    }
}

/// The whole agent against stripped targets that exit on their own while attached: every
/// frame of the executable is named, inlined frames (DWARF of the debug file) included.
#[test]
fn issue9_part1_stripped_target_exiting_while_attached_is_named() {
    let _l = live();
    for layout in layouts() {
        let mut t = start(&layout, "--seconds 0.6 --wait-traced");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("p.folded");
        let err = profiler(&attach_args(t.pid, 1000, None, &[&out]));
        assert!(
            err.contains("exited"),
            "the target exited on its own:\n{err}"
        );
        t.waiter.wait().unwrap();
        let stacks = common::read_folded(&out);
        let total: u64 = stacks.iter().map(|(_, n)| n).sum();
        let unnamed: u64 = stacks
            .iter()
            .filter(|(s, _)| s.iter().any(|f| f.starts_with("stripped_prog+")))
            .map(|(_, n)| n)
            .sum();
        let has = |name: &str| stacks.iter().any(|(s, _)| s.iter().any(|f| f == name));
        assert!(total > 100, "{total} samples\n{err}");
        assert_eq!(unnamed, 0, "frames of the executable unnamed\n{err}");
        for name in [
            "main",
            "worker_direct",
            "mix_bits",
            "worker_recursive",
            "recurse",
        ] {
            assert!(has(name), "{name} missing\n{err}");
        }
    }
}

// ---------------------------------------------------------------- part 4: roots of new threads

/// A program that creates and joins a thread every 50 ms (`cpp_app --churn-rate 20`),
/// sampled at 1000 Hz: new threads are sampled from their first instructions on (the
/// child side of `clone3`), and none of their stacks ends in `[unknown]`.
#[test]
fn issue9_part4_new_threads_end_at_their_root() {
    let _l = live();
    let fx = common::Fixture::spawn("cpp_app", &["--churn-rate", "20"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("churn.folded");
    let err = profiler(&attach_args(fx.pid(), 1000, Some(3.0), &[&out]));
    let stacks = common::read_folded(&out);
    // The churner and the threads it creates (named `churner` until they rename
    // themselves `short-lived`).
    let churn: Vec<&(Vec<String>, u64)> = stacks
        .iter()
        .filter(|(s, _)| s[0] == "short-lived" || s[0] == "churner")
        .collect();
    let new_threads: u64 = churn
        .iter()
        .filter(|(s, _)| s.iter().any(|f| f == "start_thread") || s.len() == 2)
        .map(|(_, n)| n)
        .sum();
    assert!(
        new_threads > 20,
        "{new_threads} samples of new threads\n{err}"
    );
    let bad: Vec<String> = churn
        .iter()
        .filter(|(s, _)| {
            s.iter()
                .any(|f| f.starts_with("[unknown]") || f == "[truncated]")
        })
        .map(|(s, n)| format!("{} {n}", s.join(";")))
        .collect();
    assert!(
        bad.is_empty(),
        "stacks of new threads that miss their root:\n{}",
        bad.join("\n")
    );
    // Each starts at clone3 (or clone), the root glibc's threads have.
    for (s, n) in &churn {
        assert!(
            s[1] == "clone3" || s[1] == "clone",
            "root {} ({n} samples): {}",
            s[1],
            s.join(";")
        );
    }
}

// ---------------------------------------------------------------- part 5: JIT code

/// Removes a perf map the target leaves in /tmp.
struct RemoveFile(PathBuf);
impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Share of samples whose stack reached its root, from the summary's
/// `N% of stacks reached their root`.
fn complete_share(summary: &str) -> f64 {
    summary
        .split("% of stacks reached their root")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no completeness in:\n{summary}"))
        / 100.0
}

/// A program that writes machine code to an anonymous page, names it in
/// `/tmp/perf-PID.map` (a second function appended half-way), and calls through it: the JIT
/// frames are named from the map, read again as it grows, and every stack goes through
/// them (by their frame pointers) to the root.
#[test]
fn issue9_part5_perf_map_names_jit_code_unwound_by_frame_pointers() {
    let _l = live();
    let mut fx = common::Fixture::spawn("jit_perfmap", &["--seconds", "2", "--wait-traced"]);
    let _map = RemoveFile(PathBuf::from(format!("/tmp/perf-{}.map", fx.pid())));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("jit.folded");
    let err = profiler(&attach_args(fx.pid(), 1000, None, &[&out]));
    assert!(
        fx.wait_for_line("phase2", std::time::Duration::from_secs(5))
            .is_some()
    );
    let stacks = common::read_folded(&out);
    let count = |f: &dyn Fn(&[String]) -> bool| -> u64 {
        stacks.iter().filter(|(s, _)| f(s)).map(|(_, n)| n).sum()
    };
    let total = count(&|_| true);
    let jit = |name: &'static str| {
        move |s: &[String]| s.windows(2).any(|w| w[0] == "run_jit" && w[1] == name)
    };
    let first = count(&jit("jit_first_fn"));
    let second = count(&jit("jit_second_fn"));
    let unknown = count(&|s| s.iter().any(|f| f.starts_with("[unknown]")));
    eprintln!(
        "{total} samples: {first} in jit_first_fn, {second} in jit_second_fn, {unknown} unknown"
    );
    assert!(
        first > 100 && second > 50,
        "{first} / {second} of {total}\n{err}"
    );
    let unknown_stacks: Vec<String> = stacks
        .iter()
        .filter(|(s, _)| s.iter().any(|f| f.starts_with("[unknown]")))
        .map(|(s, n)| format!("{} {n}", s.join(";")))
        .collect();
    // Known and not yet explained: in about one run in four, 1-3 of the 2,000 samples
    // find the executable's return address in no module (`[unknown]+0x…`), so their walk
    // ends there. Printed, and bounded at 0.5%, until it is found.
    if unknown > 0 {
        eprintln!("incomplete stacks:\n{}", unknown_stacks.join("\n"));
    }
    assert!(
        unknown * 200 <= total,
        "JIT frames not named or stacks not complete:\n{}\n{err}",
        unknown_stacks.join("\n")
    );
    // Both shapes: JIT code as the leaf and as a caller.
    assert!(count(&|s| s.last().is_some_and(|f| f == "jit_first_fn")) > 0);
    assert!(count(&|s| s.ends_with(&["jit_first_fn".into(), "jit_callback".into()])) > 0);
    assert!(complete_share(&err) > 0.99, "{err}");
}

/// A Python interpreter of version 3.12 or later (`-X perf`), from PATH or pyenv.
fn python_with_perf_trampolines() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = ["python3.14", "python3.13", "python3.12", "python3"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Ok(out) = Command::new("pyenv").arg("root").output() {
        let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if let Ok(dirs) = std::fs::read_dir(root.join("versions")) {
            let mut found: Vec<PathBuf> = dirs
                .flatten()
                .map(|d| d.path().join("bin/python3"))
                .collect();
            found.sort();
            candidates.extend(found.into_iter().rev());
        }
    }
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args([
                "-X",
                "perf",
                "-c",
                "import sys; assert sys.version_info >= (3, 12)",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

const HOT_PY: &str = r#"
import sys, time
def hot_leaf(n):
    s = 0
    for i in range(n):
        s += i * i
    return s
def middle(n):
    return hot_leaf(n)
def outer(seconds):
    end = time.time() + seconds
    while time.time() < end:
        middle(20000)
print("ready", flush=True)
outer(float(sys.argv[1]))
"#;

/// `python3 -X perf` (3.12+): CPython's trampolines are JIT code without frame pointers
/// or CFI; they are named from the perf map (`py::function:file`) and stepped through, so
/// the interpreter's stacks reach their root.
#[test]
fn issue9_part5_python_perf_trampolines() {
    let _l = live();
    let Some(py) = python_with_perf_trampolines() else {
        eprintln!("SKIPPED: no Python 3.12+ (python3.12, python3.13 or pyenv) for -X perf");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hot.py");
    std::fs::write(&script, HOT_PY).unwrap();
    let mut child = Command::new(&py)
        .args(["-X", "perf"])
        .arg(&script)
        .arg("4")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let _kill = KillPid(pid);
    let _map = RemoveFile(PathBuf::from(format!("/tmp/perf-{pid}.map")));
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let out = dir.path().join("py.folded");
    let err = profiler(&attach_args(pid, 500, Some(1.5), &[&out]));
    let _ = child.kill();
    let _ = child.wait();
    let stacks = common::read_folded(&out);
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let named = |name: &str| -> u64 {
        stacks
            .iter()
            .filter(|(s, _)| s.iter().any(|f| f.starts_with(name)))
            .map(|(_, n)| n)
            .sum()
    };
    let in_hot = named("py::hot_leaf:");
    eprintln!(
        "{}: {total} samples, {in_hot} in py::hot_leaf, {:.1}% complete",
        py.display(),
        100.0 * complete_share(&err)
    );
    assert!(
        in_hot * 2 > total,
        "py::hot_leaf in {in_hot} of {total}\n{err}"
    );
    assert!(named("py::outer:") * 2 > total, "py::outer missing\n{err}");
    assert!(complete_share(&err) > 0.9, "{err}");
}
