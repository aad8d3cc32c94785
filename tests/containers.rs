//! Targets the agent cannot see by path: in their own mount and PID namespaces with their
//! binary on a private tmpfs and their debug files in their own /usr/lib/debug (the way a
//! sidecar sees a service container), and a binary deleted after it started.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{KillOnDrop, fixture_path, skip};

static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Kills a process that is not our child (the namespace's first process).
struct KillPid(i32);
impl Drop for KillPid {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn can_unshare() -> bool {
    Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Host pid of the process whose parent is `parent` and whose comm is `comm`.
fn child_named(parent: u32, comm: &str) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let name = &stat[stat.find('(').unwrap() + 1..close];
            let ppid: u32 = stat[close + 2..]
                .split(' ')
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if ppid == parent && name == comm {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn attach(pid: i32, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "attach".to_string(),
        "--pid".into(),
        pid.to_string(),
        "-d".into(),
        "2".into(),
        "-F".into(),
        "500".into(),
        "-o".into(),
        out.to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    common::ptrace_agent().args(&args).output().unwrap()
}

fn check_named(out: &Path, o: &Output) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    let f = std::fs::read_to_string(out).unwrap();
    for name in [
        "worker_direct",
        "worker_recursive",
        "worker_indirect",
        "mix_bits",
        "main",
    ] {
        assert!(f.contains(name), "{name} missing:\n{f}\n{e}");
    }
}

/// Runs `script` as pid 1 of new mount and PID namespaces.
fn in_namespaces(script: &str) -> KillOnDrop {
    let child = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
        ])
        .args(["/bin/sh", "-c", script])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

#[test]
fn target_in_other_mount_and_pid_namespaces() {
    let _l = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if !nix::unistd::geteuid().is_root() {
        skip("needs root (to mount in a new mount namespace)");
        return;
    }
    if !can_unshare() {
        skip("`unshare --mount --pid --fork` does not work here");
        return;
    }
    // A directory that exists for the agent but is empty there: the binary lives on a tmpfs
    // mounted over it in the target's namespace only.
    let hidden = tempfile::tempdir().unwrap();
    let dir = hidden.path().display().to_string();
    let stripped = fixture_path("c_workers_stripped_buildid");
    let debug = fixture_path("debug");
    // The stripped binary's debug file sits only in the target's own /usr/lib/debug.
    std::fs::create_dir_all("/usr/lib/debug").unwrap();
    let script = format!(
        "set -e; mount -t tmpfs none {dir}; cp {bin} {dir}/svc; \
         mount -t tmpfs none /usr/lib/debug; cp -r {debug}/.build-id /usr/lib/debug/; \
         exec {dir}/svc",
        bin = stripped.display(),
        debug = debug.display(),
    );
    let ns = in_namespaces(&script);
    let pid = child_named(ns.0.id(), "svc").expect("target started");
    let _target = KillPid(pid);
    assert!(
        !PathBuf::from(&dir).join("svc").exists(),
        "the binary must be invisible to the agent by path"
    );
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("ns.folded");
    // No --debug-dir: the debug file is found inside the target's root.
    let o = attach(pid, &out, &[]);
    check_named(&out, &o);
}

#[test]
fn deleted_binary_is_still_named() {
    let _l = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("gone");
    std::fs::copy(fixture_path("c_workers"), &copy).unwrap();
    let child = KillOnDrop(Command::new(&copy).stdout(Stdio::piped()).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(&copy).unwrap();
    let out = dir.path().join("p.folded");
    let o = attach(child.0.id() as i32, &out, &[]);
    check_named(&out, &o);
}
