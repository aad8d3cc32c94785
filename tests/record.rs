//! `profiler record -- PROGRAM`: the program runs from its first instruction under the
//! agent, with its own standard streams, its exit code becomes the agent's, Ctrl-C reaches
//! it as from a shell, and the outputs are written when it exits.

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fixture_path;

static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn live() -> std::sync::MutexGuard<'static, ()> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn record() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_profiler"));
    c.arg("record");
    c
}

fn finish(mut child: std::process::Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("profiler record did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn run(args: &[&str]) -> Output {
    finish(
        record()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn samples_of(folded: &str, frame: &str) -> u64 {
    folded
        .lines()
        .filter(|l| l.split(';').any(|f| f.split(' ').next() == Some(frame)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn exit_codes_are_the_programs() {
    let _l = live();
    assert_eq!(run(&["--", "sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(run(&["--", "true"]).status.code(), Some(0));
    // Ended by a signal: 128 + N, as a shell says.
    let o = run(&["--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    let o = run(&["--", "no-such-program-anywhere"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(stderr(&o).contains("no-such-program-anywhere: command not found"));
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("not-executable");
    std::fs::write(&plain, "echo hi\n").unwrap();
    assert_eq!(
        run(&["--", plain.to_str().unwrap()]).status.code(),
        Some(126)
    );
    // attach's target options make no sense here.
    assert_eq!(run(&["-p", "1", "--", "true"]).status.code(), Some(1));
}

#[test]
fn standard_streams_are_the_programs() {
    let _l = live();
    let mut child = record()
        .args([
            "-o",
            "-",
            "--",
            "sh",
            "-c",
            "read x; echo got $x; echo oops >&2",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let o = finish(child);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("got hello\n"), "{out:?}");
    assert!(stderr(&o).contains("oops\n"), "{}", stderr(&o));
}

/// A program that works for a fraction of a second and exits: sampled from its start, so
/// its whole run is in the profile.
#[test]
fn a_short_program_is_profiled_from_its_start_to_its_exit() {
    let _l = live();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.folded");
    let bin = fixture_path("c_workers");
    let o = run(&[
        "-F",
        "1000",
        "-o",
        out.to_str().unwrap(),
        "--",
        bin.to_str().unwrap(),
        "--seconds",
        "0.3",
    ]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    let f = std::fs::read_to_string(&out).unwrap();
    let n: u64 = f
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    // 0.3 s of one busy thread at 1000 Hz, from the first instruction to the exit.
    assert!(n >= 150, "{n} samples\n{f}\n{e}");
    for w in ["worker_direct", "worker_recursive", "worker_indirect"] {
        assert!(samples_of(&f, w) > 0, "{w}\n{f}");
    }
    assert!(e.contains("c_workers exited with code 0"), "{e}");
    assert!(e.contains("(exited)"), "the thread is still listed\n{e}");
}

/// A recursion that deepens from the program's start grows the main thread's stack below
/// the `[stack]` mapping the agent read last: those samples are still copied whole, so
/// they reach the root (with only 64 KiB copied they ended in `[truncated]`).
#[test]
fn a_stack_growing_from_the_start_is_copied_whole() {
    let _l = live();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.folded");
    let bin = fixture_path("deep_recursion");
    let o = run(&[
        "-F",
        "1000",
        "-o",
        out.to_str().unwrap(),
        "--",
        bin.to_str().unwrap(),
        "--work",
        "80000",
    ]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    let stacks = common::read_folded(&out);
    let n: u64 = stacks.iter().map(|(_, c)| c).sum();
    let cut: u64 = stacks
        .iter()
        .filter(|(s, _)| {
            s.iter()
                .any(|f| f.contains("[truncated]") || f.contains("[unknown]"))
        })
        .map(|(_, c)| c)
        .sum();
    assert!(n >= 100, "{n} samples\n{e}");
    assert!(cut * 200 <= n, "{cut} of {n} stacks cut short\n{e}");
}

/// Ctrl-C in a terminal signals the whole foreground process group: the program decides
/// what to do with it and the agent goes on until the program exits.
#[test]
fn ctrl_c_goes_to_the_program_as_in_a_shell() {
    let _l = live();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.folded");
    // Idle until the SIGINT, then busy for a while in its handler, then exit 3.
    let script = "trap 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; echo bye; exit 3' INT; \
                  while :; do sleep 0.05; done";
    let child = record()
        .args(["-o", out.to_str().unwrap(), "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    std::thread::sleep(Duration::from_millis(800));
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT).unwrap();
    let o = finish(child);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("bye"));
    // The agent went on sampling after the Ctrl-C: the handler's work is in the profile.
    let f = std::fs::read_to_string(&out).unwrap();
    let n: u64 = f
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(
        n >= 10,
        "{n} on-CPU samples after the Ctrl-C\n{}",
        stderr(&o)
    );

    // SIGTERM sent to the agent alone is passed on to the program.
    let bin = fixture_path("c_workers");
    let child = record()
        .args(["-o", out.to_str().unwrap(), "--", bin.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let agent = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGTERM).unwrap();
    let o = finish(child);
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    let f = std::fs::read_to_string(&out).unwrap();
    assert!(samples_of(&f, "worker_direct") > 0, "{f}");
}

/// With --duration the outputs are written when it ends; the program runs on and the agent
/// still exits with its code.
#[test]
fn duration_ends_sampling_not_the_program() {
    let _l = live();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.folded");
    let bin = fixture_path("c_workers");
    let t0 = Instant::now();
    let o = run(&[
        "-d",
        "0.3",
        "--idle",
        "-o",
        out.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &format!("{} --seconds 1.2; exit 5", bin.display()),
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(t0.elapsed() >= Duration::from_secs(1), "the agent waited");
    assert!(stderr(&o).contains("waiting for sh"), "{}", stderr(&o));
    assert!(out.metadata().unwrap().len() > 0);
}
