//! The target's lifecycle under the profiler: it forks, execs, takes signals, churns
//! threads; the profiler is killed at random moments. The target must never be hurt, left
//! stopped or left traced.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, fixture_path, tracer_pid};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn live() -> std::sync::MutexGuard<'static, ()> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn profiler(args: &[&str]) -> std::process::Child {
    common::ptrace_agent()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: std::process::Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "profiler did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn folded(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// States of every thread of `pid`.
fn thread_states(pid: i32) -> Vec<char> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return vec![];
    };
    dir.filter_map(|e| {
        let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
        stat[stat.rfind(')')? + 2..].chars().next()
    })
    .collect()
}

/// Whether `pid` is traced by a thread of process `agent` (`TracerPid` is the tracing
/// thread's id).
fn traced_by(pid: i32, agent: u32) -> bool {
    tracer_pid(pid)
        .is_some_and(|t| t != 0 && Path::new(&format!("/proc/{agent}/task/{t}")).exists())
}

/// Waits (up to 10 s) until `agent` is the tracer of `pid`; panics, with the agent's
/// stderr, if it exits first or does not attach in time.
fn wait_attached(pid: i32, agent: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !traced_by(pid, agent.id()) {
        if let Some(status) = agent.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = agent.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("the agent exited ({status}) before attaching to {pid}:\n{err}");
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not attach to {pid} in 10 s (TracerPid {:?})",
            tracer_pid(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The target is untraced and no thread of it is in a tracing stop.
fn assert_free(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let states = thread_states(pid);
        let traced = tracer_pid(pid).unwrap_or(0) != 0;
        if !traced && !states.contains(&'t') && !states.contains(&'T') {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "target {pid} traced={traced} states {states:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_forked_child_is_left_alone() {
    let _l = live();
    let mut fx = Fixture::spawn("lifecycle_app", &["--wait-traced", "--fork"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.folded");
    let pid = fx.pid().to_string();
    let agent = profiler(&[
        "attach",
        "--pid",
        &pid,
        "-d",
        "2",
        "-F",
        "200",
        "-o",
        out.to_str().unwrap(),
    ]);
    let line = fx
        .wait_for_line("child ", Duration::from_secs(5))
        .expect("child line");
    let child: i32 = line.trim().strip_prefix("child ").unwrap().parse().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tracer_pid(child), Some(0), "the child must not be traced");
    assert_ne!(tracer_pid(fx.pid()), Some(0), "the parent is traced");
    let o = finish(agent, Duration::from_secs(30));
    assert!(o.status.success(), "{}", stderr(&o));
    let f = folded(&out);
    assert!(f.contains("parent_spin"), "{f}");
    assert!(!f.contains("child_spin"), "the child was sampled");
    assert_free(fx.pid());
    assert_free(child);
}

#[test]
fn sampling_goes_on_across_exec() {
    let _l = live();
    let target = fixture_path("c_workers");
    let mut fx = Fixture::spawn(
        "lifecycle_app",
        &[
            "--wait-traced",
            "--after-ms",
            "800",
            "--exec",
            target.to_str().unwrap(),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.folded");
    let pid = fx.pid().to_string();
    let agent = profiler(&[
        "attach",
        "--pid",
        &pid,
        "-d",
        "3",
        "-F",
        "500",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(fx.wait_for_line("exec", Duration::from_secs(10)).is_some());
    let o = finish(agent, Duration::from_secs(30));
    assert!(o.status.success(), "{}", stderr(&o));
    let f = folded(&out);
    assert!(
        f.contains("before_exec"),
        "no samples before the exec:\n{f}"
    );
    assert!(
        f.contains("worker_direct") && f.contains("worker_indirect"),
        "none after:\n{f}"
    );
    // After the exec the thread has the new program's name.
    assert!(f.lines().any(|l| l.starts_with("c_workers;")), "{f}");
    assert_free(fx.pid());
}

#[test]
fn signals_sent_to_the_target_are_delivered() {
    let _l = live();
    let mut fx = Fixture::spawn("lifecycle_app", &["--signals"]);
    let pid = fx.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.folded");
    let mut agent = profiler(&[
        "attach",
        "--pid",
        &pid,
        "-F",
        "1000",
        "-o",
        out.to_str().unwrap(),
    ]);
    // The signals must arrive while the target is traced (ptrace intercepts them), and with
    // samples taken around them.
    wait_attached(fx.pid(), &mut agent);
    std::thread::sleep(Duration::from_millis(300));
    assert!(traced_by(fx.pid(), agent.id()), "still traced by the agent");
    kill(Pid::from_raw(fx.pid()), Signal::SIGINT).unwrap();
    assert!(
        fx.wait_for_line("got SIGINT", Duration::from_secs(5))
            .is_some()
    );
    kill(Pid::from_raw(fx.pid()), Signal::SIGTERM).unwrap();
    assert!(
        fx.wait_for_line("got SIGTERM", Duration::from_secs(5))
            .is_some()
    );
    assert!(
        fx.wait_exit(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
    let o = finish(agent, Duration::from_secs(30));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("target exited"), "{}", stderr(&o));
    assert!(folded(&out).contains("signal_spin"));
}

#[test]
fn thread_churn_leaves_nothing_stopped() {
    let _l = live();
    let mut fx = Fixture::spawn("lifecycle_app", &["--threads", "8", "--seconds", "6"]);
    let pid = fx.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.folded");
    let o = finish(
        profiler(&[
            "attach",
            "--pid",
            &pid,
            "-d",
            "3",
            "-F",
            "1000",
            "-o",
            out.to_str().unwrap(),
        ]),
        Duration::from_secs(60),
    );
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    // (Not any "error": glibc's thread exit runs `__libc_dlerror_result_free`, which the
    // top functions may list.)
    assert!(
        !e.contains("profiler: error") && !e.contains("panicked"),
        "{e}"
    );
    assert!(
        e.contains("threads seen"),
        "the summary reports threads seen and missed: {e}"
    );
    assert!(folded(&out).contains("thread_body"));
    assert_free(fx.pid());
    let line = fx
        .wait_for_line("threads ", Duration::from_secs(10))
        .expect("threads line");
    let made: u64 = line
        .trim()
        .strip_prefix("threads ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(made > 1000, "only {made} threads created");
    assert!(
        fx.wait_exit(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn sigkill_of_the_agent_never_hurts_the_target() {
    let _l = live();
    let fx = Fixture::spawn("cpp_app", &["--churn-rate", "200"]);
    let pid = fx.pid().to_string();
    let mut rng = 0x2545F4914F6CDD1Du64;
    for round in 0..100 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_micros(rng % 300_000);
        let agent = profiler(&["attach", "--pid", &pid, "-F", "1000"]);
        std::thread::sleep(delay);
        kill(Pid::from_raw(agent.id() as i32), Signal::SIGKILL).unwrap();
        let _ = finish(agent, Duration::from_secs(10));
        assert_free(fx.pid());
        assert!(
            std::fs::metadata(format!("/proc/{}", fx.pid())).is_ok(),
            "target died in round {round}"
        );
    }
    // Still working: its threads run.
    let states = thread_states(fx.pid());
    assert!(states.contains(&'R'), "{states:?}");
}
