//! A sidecar's lifecycle: wait for a process by name or pid file, profile it, wait for its
//! successor; and `profiler doctor`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, KillOnDrop, fixture_path};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn profiler(args: &[&str]) -> Child {
    common::ptrace_agent()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn traced(pid: u32) -> bool {
    common::tracer_pid(pid as i32).unwrap_or(0) != 0
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn process_name_follows_restarts() {
    let _l = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let name = format!("svc{}", std::process::id() % 100_000);
    let bin = dir.path().join(&name);
    std::fs::copy(fixture_path("c_workers"), &bin).unwrap();
    let out = dir.path().join("p.folded");
    let agent = profiler(&[
        "attach",
        "--process-name",
        &name,
        "-F",
        "200",
        "-o",
        out.to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..2 {
        let svc = KillOnDrop(Command::new(&bin).stdout(Stdio::null()).spawn().unwrap());
        wait_until("the agent to attach", || traced(svc.0.id()));
        std::thread::sleep(Duration::from_millis(700));
        drop(svc);
        // The agent notices the exit, writes its outputs and waits for the next one.
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_millis(300));
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).unwrap();
    let o = agent.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert_eq!(e.matches("target exited").count(), 2, "{e}");
    assert!(
        e.contains(&format!("waiting for a process named {name}")),
        "{e}"
    );
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("worker_direct")
    );
}

#[test]
fn pid_file_names_the_target() {
    let _l = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let fx = Fixture::spawn("c_workers", &[]);
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("svc.pid");
    let out = dir.path().join("p.folded");
    let agent = profiler(&[
        "attach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "-d",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&pid_file, format!("{}\n", fx.pid())).unwrap();
    let o = agent.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("waiting for a live process in"), "{e}");
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("worker_direct")
    );
}

#[test]
fn doctor_says_what_to_fix() {
    let _l = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let fx = Fixture::spawn("c_workers_stripped_buildid", &[]);
    let pid = fx.pid().to_string();
    let o = common::ptrace_agent()
        .args(["doctor", "--pid", &pid])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("can profile process"), "{text}");
    assert!(text.contains("ptrace: seized 1 threads"), "{text}");
    // The stripped binary has no symbols without its debug directory ...
    assert!(
        text.contains("no symbols at all for:") && text.contains("c_workers_stripped_buildid"),
        "{text}"
    );
    // ... and has them with it.
    let debug = fixture_path("debug");
    let o = common::ptrace_agent()
        .args([
            "doctor",
            "--pid",
            &pid,
            "--debug-dir",
            debug.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!text.contains("c_workers_stripped_buildid"), "{text}");
    assert_eq!(common::tracer_pid(fx.pid()), Some(0), "doctor detached");

    // Already traced: named; the exit code says it cannot profile, unless the perf
    // source (which needs no ptrace) is permitted.
    let agent = KillOnDrop(profiler(&["attach", "--pid", &pid, "-d", "10"]));
    wait_until("the agent to attach", || traced(fx.pid() as u32));
    let o = common::ptrace_agent()
        .args(["doctor", "--pid", &pid])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("already traced by process"), "{text}");
    if common::perf_permitted(fx.pid()).is_ok() {
        assert!(o.status.success(), "{text}");
        assert!(text.contains("the perf source samples it anyway"), "{text}");
        assert!(
            text.contains("sampler: perf_event_open permitted"),
            "{text}"
        );
    } else {
        assert!(!o.status.success(), "{text}");
        assert!(text.contains("`--sampler auto` uses ptrace"), "{text}");
    }
    drop(agent);

    let o = common::ptrace_agent()
        .args(["doctor", "--pid", "999999999"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("no process 999999999"));
}

#[test]
fn agent_keeps_only_the_capabilities_it_needs() {
    let _l = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if !nix::unistd::geteuid().is_root() {
        common::skip("needs root (checks which capabilities the agent drops)");
        return;
    }
    let fx = Fixture::spawn("c_workers", &[]);
    let agent = KillOnDrop(profiler(&[
        "attach",
        "--pid",
        &fx.pid().to_string(),
        "-d",
        "3",
    ]));
    wait_until("the agent to attach", || traced(fx.pid() as u32));
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.0.id())).unwrap();
    let field = |k: &str| {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim();
        u64::from_str_radix(v, 16).unwrap()
    };
    // CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_SYS_NICE (23), CAP_PERFMON (38),
    // CAP_CHECKPOINT_RESTORE (40).
    let allowed: u64 = (1 << 2) | (1 << 19) | (1 << 23) | (1 << 38) | (1 << 40);
    for k in ["CapEff:", "CapPrm:", "CapInh:"] {
        assert_eq!(field(k) & !allowed, 0, "{k} {:x}", field(k));
    }
    assert_ne!(field("CapEff:") & (1 << 19), 0, "CAP_SYS_PTRACE kept");
    assert!(status.contains("NoNewPrivs:\t1"));
}

/// A reader that went away (`profiler doctor | head -1`, a log pipe that closed) makes
/// writes fail with EPIPE: the agent ends normally, it does not panic, and it leaves the
/// target untraced.
#[test]
fn closed_output_pipes_are_not_fatal() {
    let _l = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let fx = Fixture::spawn("c_workers", &[]);
    let pid = fx.pid().to_string();
    for args in [
        vec!["doctor", "--pid", pid.as_str()],
        vec!["attach", "--pid", pid.as_str(), "--duration", "0.5"],
    ] {
        // Both ends of a pipe, the reading one closed before the agent starts.
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let write2 = write.try_clone().unwrap();
        let o = common::ptrace_agent()
            .args(&args)
            .stdout(Stdio::from(write))
            .stderr(Stdio::from(write2))
            .output()
            .unwrap();
        assert_ne!(o.status.code(), Some(101), "{args:?} panicked");
        assert!(o.status.code().is_some(), "{args:?} killed: {:?}", o.status);
        assert_eq!(
            common::tracer_pid(fx.pid()),
            Some(0),
            "{args:?} left it traced"
        );
    }
}

#[test]
fn failing_setup_never_touches_the_target() {
    let _l = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let fx = Fixture::spawn("c_workers", &[]);
    let pid = fx.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let envelopes = format!("{}/env/", dir.path().display());
    // The profiler-id file cannot be written (no directory can be made under /proc): the
    // run must fail before it seizes anything, not after.
    let o = common::ptrace_agent()
        .args([
            "attach",
            "--pid",
            &pid,
            "-d",
            "2",
            "-o",
            &envelopes,
            "--profiler-id-file",
            "/proc/no-such-dir/profiler-id",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("profiler id"), "names the cause: {err}");
    assert!(!err.contains("attached to"), "seized before failing: {err}");
    assert_eq!(common::tracer_pid(fx.pid()), Some(0));
}

#[test]
fn threads_the_kernel_refuses_are_reported() {
    let _l = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if !nix::unistd::geteuid().is_root()
        || Command::new("setpriv").arg("--version").output().is_err()
    {
        common::skip("needs root and setpriv");
        return;
    }
    let mut fx = Fixture::spawn("other_uid_thread", &[]);
    let other = fx
        .threads()
        .into_iter()
        .map(|(tid, _)| tid)
        .find(|&tid| tid != fx.pid())
        .expect("the second thread");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.folded");
    // Root without CAP_SYS_PTRACE: it may trace the threads of its own uid only.
    let o = Command::new("setpriv")
        .args(["--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", "--"])
        .arg(env!("CARGO_BIN_EXE_profiler"))
        .env("PROFILER_SAMPLER", "ptrace")
        .args(["attach", "--pid", &fx.pid().to_string(), "-d", "1", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("threads the kernel would not let the agent trace, left out: 1")
            && err.contains(&format!("{other} (")),
        "the refused thread is named: {err}"
    );
    assert!(fx.try_exit_status().is_none(), "the target runs on");
    assert_eq!(common::tracer_pid(fx.pid()), Some(0));
}
