//! Python frames on every CPython 3.9–3.13 the machine has: `fixtures/py/cpu_split.py` runs
//! under `profiler record --sampler ptrace --idle` at 100 Hz and measures its own
//! wall-clock split; the
//! profile must agree with it, reach the thread roots, show the ctypes callback as
//! Python → C → Python, read a 1,000-frame recursion whole, and name functions and lines as
//! the interpreter does (`inspect`/`dis` output of the fixture).
//!
//! Debian's `/usr/bin/python3` is required; pyenv interpreters (`$PYENV_ROOT/versions/3.X.*`,
//! else `~/.pyenv/versions`) are used where installed, and the test prints which versions
//! ran and which are not installed (a missing pyenv version is not a skip: CI machines
//! have only some of them).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use profiler::sentry_format::envelope::parse_envelope;
use serde_json::Value;

const SECONDS: &str = "8";

/// Interpreters to run: Debian's python3 first, then one pyenv install per minor version.
fn interpreters() -> (Vec<PathBuf>, Vec<String>) {
    let mut found = vec![PathBuf::from("/usr/bin/python3")];
    assert!(
        found[0].exists(),
        "/usr/bin/python3 is required (apt-get install python3)"
    );
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"))
        .join("versions");
    let mut missing = Vec::new();
    for minor in 9..=13 {
        let prefix = format!("3.{minor}.");
        let mut versions: Vec<PathBuf> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .filter(|e| !e.file_name().to_string_lossy().ends_with('t'))
            .map(|e| e.path().join("bin/python3"))
            .filter(|p| p.exists())
            .collect();
        versions.sort();
        match versions.pop() {
            Some(p) => found.push(p),
            None => missing.push(format!("3.{minor}")),
        }
    }
    (found, missing)
}

struct Run {
    version: String,
    folded: Vec<(Vec<String>, u64)>,
    fixture: Value,
    chunks: Vec<Value>,
    stderr: String,
}

fn record(python: &Path, dir: &Path) -> Run {
    let folded = dir.join("out.folded");
    let envelopes = dir.join("chunks");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/py/cpu_split.py");
    let child = common::ptrace_agent()
        // Wall-clock (--idle): the fixture's split is wall-clock time per task (the main
        // thread also waits for the GIL, which its CPU clock does not count).
        .args(["record", "--sampler", "ptrace", "--idle", "-F", "100", "-o"])
        .arg(&folded)
        .arg("-o")
        .arg(format!("{}/", envelopes.display()))
        .arg("--")
        .arg(python)
        .arg(&script)
        .args(["--seconds", SECONDS])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("profiler record of {} did not finish", python.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON from the fixture; stderr:\n{stderr}"));
    let fixture: Value = serde_json::from_str(line).unwrap();
    let folded = common::read_folded(&folded);
    let mut chunks = Vec::new();
    for e in std::fs::read_dir(&envelopes).unwrap().flatten() {
        let env = parse_envelope(&std::fs::read(e.path()).unwrap()).unwrap();
        for item in env.items {
            let v: Value = serde_json::from_slice(&item.payload).unwrap();
            profiler::sentry_format::validate::validate_item(&v, item.header["platform"].as_str())
                .unwrap_or_else(|e| panic!("chunk refused: {e}"));
            chunks.push(v);
        }
    }
    Run {
        version: fixture["version"].as_str().unwrap().to_string(),
        folded,
        fixture,
        chunks,
        stderr,
    }
}

/// A line straight to stderr (visible in CI logs even when the test passes).
fn say(line: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Index of the first frame of `stack` whose label starts with `name (`.
fn find(stack: &[String], name: &str) -> Option<usize> {
    let p = format!("{name} (");
    stack.iter().position(|f| f.starts_with(&p))
}

fn check(run: &Run, failures: &mut Vec<String>) {
    let v = &run.version;
    let f = &run.fixture["functions"];
    let name = |k: &str| f[k]["qualname"].as_str().unwrap().to_string();
    let mut fail = |m: String| failures.push(format!("{v}: {m}"));

    // Attribution: the share of the main loop's samples in each task against the fixture's
    // own thread-CPU split.
    let main_loop = name("main_loop");
    let in_loop: u64 = run
        .folded
        .iter()
        .filter(|(s, _)| find(s, &main_loop).is_some())
        .map(|(_, n)| n)
        .sum();
    let mut worst: f64 = 0.0;
    let mut shares = BTreeMap::new();
    for task in ["plain_work", "method_work", "callback_work"] {
        let n: u64 = run
            .folded
            .iter()
            .filter(|(s, _)| find(s, task).is_some())
            .map(|(_, n)| n)
            .sum();
        let share = n as f64 / in_loop.max(1) as f64;
        let want = run.fixture["split"][task].as_f64().unwrap();
        worst = worst.max((share - want).abs());
        shares.insert(task, (share, want));
    }
    say(format!(
        "{v}: {in_loop} samples in the main loop; task shares (profile, measured): {shares:?}; attribution error {worst:.3}"
    ));
    if in_loop < 200 {
        fail(format!("only {in_loop} samples in the main loop"));
    }
    if worst > 0.03 {
        fail(format!("attribution error {worst:.3} > 0.03: {shares:?}"));
    }

    // Stacks that reach their thread's root (no marker frame at the root side).
    let total: u64 = run.folded.iter().map(|(_, n)| n).sum();
    let cut: u64 = run
        .folded
        .iter()
        .filter(|(s, _)| {
            s.iter().any(|f| {
                f.starts_with("[truncated]")
                    || f.starts_with("[unknown]")
                    || f.starts_with("[max depth]")
            })
        })
        .map(|(_, n)| n)
        .sum();
    let complete = 1.0 - cut as f64 / total.max(1) as f64;
    say(format!(
        "{v}: {:.1}% of {total} stacks reach their root",
        complete * 100.0
    ));
    if complete < 0.99 {
        fail(format!(
            "{:.1}% of stacks reach their root",
            complete * 100.0
        ));
    }

    // Python → C → Python: callback_work, then qsort, then py_compare, root to leaf.
    let cb = name("callback_work");
    let cmp = name("py_compare");
    let layered = run.folded.iter().any(|(s, _)| {
        let (Some(a), Some(c)) = (find(s, &cb), find(s, &cmp)) else {
            return false;
        };
        s[a..c].iter().any(|x| x.contains("qsort")) && a < c
    });
    if !layered {
        fail("no stack shows callback_work → qsort → py_compare".into());
    }

    // The 1,000-frame recursion, whole, under its thread's root.
    let deep = name("deep");
    let deepest = run
        .folded
        .iter()
        .map(|(s, _)| {
            s.iter()
                .filter(|x| x.starts_with(&format!("{deep} (")))
                .count()
        })
        .max()
        .unwrap_or(0);
    if deepest < 1001 {
        fail(format!(
            "deepest recursion seen: {deepest} frames of deep (want 1001)"
        ));
    }

    // Names and lines, from the Sentry chunks (frames carry the line executed).
    let mut seen_py = 0;
    for c in &run.chunks {
        if c["platform"] != "python" {
            fail(format!("chunk platform {}", c["platform"]));
        }
        let frames = c["profile"]["frames"].as_array().unwrap();
        for fr in frames {
            match fr["platform"].as_str() {
                Some("python") => {
                    seen_py += 1;
                    if fr.get("instruction_addr").is_some() {
                        fail("a Python frame has an instruction_addr".into());
                    }
                }
                Some("native") => {
                    if fr.get("instruction_addr").is_none() {
                        fail("a native frame lacks its instruction_addr".into());
                    }
                }
                p => fail(format!("frame platform {p:?}")),
            }
        }
        let lines_of = |k: &str| -> Vec<u64> {
            f[k]["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_u64().unwrap())
                .collect()
        };
        let call = |k: &str, c: &str| f[k]["calls"][c].as_u64().unwrap();
        for stack in c["profile"]["stacks"].as_array().unwrap() {
            let st: Vec<&Value> = stack
                .as_array()
                .unwrap()
                .iter()
                .map(|i| &frames[i.as_u64().unwrap() as usize])
                .collect();
            for (i, fr) in st.iter().enumerate() {
                let func = fr["function"].as_str().unwrap_or("");
                let line = fr["lineno"].as_u64().unwrap_or(0);
                let callee = i.checked_sub(1).map(|j| st[j]);
                let callee_fn = callee.and_then(|c| c["function"].as_str()).unwrap_or("");
                let callee_py = callee.is_some_and(|c| c["platform"] == "python");
                for key in [
                    "Walker.step",
                    "spin",
                    "py_compare",
                    "plain_work",
                    "method_work",
                    "callback_work",
                    "deep",
                ] {
                    if func == name(key) && fr["platform"] == "python" {
                        if !lines_of(key).contains(&line) {
                            fail(format!(
                                "{func} at line {line}, not a line of its code {:?}",
                                lines_of(key)
                            ));
                        }
                        if fr["filename"] != "cpu_split.py"
                            || fr["module"] != "cpu_split"
                            || fr["in_app"] != true
                        {
                            fail(format!(
                                "{func}: filename {} module {} in_app {}",
                                fr["filename"], fr["module"], fr["in_app"]
                            ));
                        }
                    }
                }
                let want = if func == name("Walker.step") && callee_fn == name("Walker.step") {
                    Some(call("Walker.step", "Walker.step"))
                } else if func == name("Walker.step") && callee_fn == name("spin") {
                    Some(call("Walker.step", "Walker.step.leaf"))
                } else if func == name("method_work") && callee_py {
                    Some(call("method_work", "method_work"))
                } else if func == name("plain_work") && callee_py {
                    Some(call("plain_work", "plain_work"))
                } else if func == name("callback_work")
                    && st[..i]
                        .iter()
                        .any(|c| c["function"].as_str().is_some_and(|n| n.contains("qsort")))
                {
                    Some(call("callback_work", "callback_work"))
                } else {
                    None
                };
                if let Some(w) = want
                    && line != w
                {
                    fail(format!(
                        "{func} calls {callee_fn} at line {line}, the call is at line {w}"
                    ));
                }
            }
        }
    }
    if seen_py == 0 {
        fail("no Python frame in the Sentry chunks".into());
    }
    if !run
        .stderr
        .contains("Python frames merged with native frames")
    {
        fail(format!(
            "the summary does not say Python frames were read:\n{}",
            run.stderr
        ));
    }
}

#[test]
fn python_frames_on_every_installed_cpython() {
    let (pythons, missing) = interpreters();
    let tmp = tempfile::tempdir().unwrap();
    let mut ran = Vec::new();
    let mut failures = Vec::new();
    for (i, py) in pythons.iter().enumerate() {
        let dir = tmp.path().join(i.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let run = record(py, &dir);
        check(&run, &mut failures);
        ran.push(run.version.clone());
    }
    let line = format!(
        "python versions: ran {}; not installed: {}\n",
        ran.join(" "),
        if missing.is_empty() {
            "none".to_string()
        } else {
            missing.join(" ")
        }
    );
    // Straight to stderr, like a skip line: visible in CI logs even when the test passes.
    use std::io::Write;
    let _ = std::io::stderr().write_all(line.as_bytes());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The perf source reads Python frames when it drains each sample: stacks are merged and
/// the summary counts the samples whose Python frames no longer matched.
#[test]
fn python_frames_with_the_perf_sampler() {
    use std::io::{BufRead, BufReader, Write};
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/py/cpu_split.py");
    let mut py = std::process::Command::new("/usr/bin/python3")
        .arg(&script)
        .args(["--seconds", "6", "--wait-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pid: i32 = line.trim().strip_prefix("ready ").unwrap().parse().unwrap();
    if let Err(why) = common::perf_permitted(pid) {
        let _ = py.kill();
        let _ = py.wait();
        common::skip(&format!("perf events not permitted: {why}"));
        return;
    }
    writeln!(py.stdin.as_mut().unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let folded = tmp.path().join("perf.folded");
    let agent = common::ptrace_agent()
        .args([
            "attach",
            "--sampler",
            "perf",
            "-F",
            "100",
            "--duration",
            "4",
            "--pid",
        ])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&folded)
        .output()
        .unwrap();
    let _ = py.wait();
    let stderr = String::from_utf8_lossy(&agent.stderr);
    assert!(agent.status.success(), "{stderr}");
    assert!(
        stderr.contains("Python frames merged with native frames"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&folded).unwrap();
    // Python frames merged with the native ones: the ctypes call from Python into C
    // (callback_work → qsort), and the method recursion under the main loop. (The frames
    // are read after the sample, so a callback caught in qsort is often read after it
    // returned: the three-layer order is the ptrace test's.)
    let order = |outer: &str, inner: &str| {
        text.lines().any(|l| {
            let f: Vec<&str> = l.split(';').collect();
            let a = f.iter().position(|x| x.starts_with(outer));
            let b = f.iter().rposition(|x| x.contains(inner));
            matches!((a, b), (Some(a), Some(b)) if a < b)
        })
    };
    assert!(
        order("callback_work (", "qsort"),
        "no callback_work → qsort stack:\n{stderr}\n{text}"
    );
    assert!(
        order("main_loop (", "Walker.step ("),
        "no main_loop → Walker.step stack:\n{stderr}"
    );
    say(stderr
        .lines()
        .find(|l| l.contains("samples with Python frames"))
        .unwrap_or("")
        .trim()
        .to_string());
}
