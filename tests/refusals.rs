//! Nothing lost, nobody else's data sent, and refusals that name the real cause (issue 13):
//! outputs checked before the first sample and failed writes failing the run, a spool
//! directory another user controls refused, and the causes of refused or odd attaches (a
//! zombie, a main thread that exited, capabilities the agent lacks, a user namespace, another
//! tracer, a stopped target, a pid file holding garbage) read from the target's status.
//! Cases of a hostile local user run the agent under another uid with `setpriv`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Fixture, KillOnDrop, fixture_path, tracer_pid};

static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn live() -> std::sync::MutexGuard<'static, ()> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

const NOBODY: [&str; 5] = [
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
];

fn profiler(args: &[&str]) -> Output {
    common::ptrace_agent().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn has(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A directory every user may enter, holding a copy of the profiler every user may run
/// (the build directory may be closed to them).
struct Shared {
    dir: tempfile::TempDir,
}

impl Shared {
    fn new() -> Shared {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.path().join("profiler");
        std::fs::copy(env!("CARGO_BIN_EXE_profiler"), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        Shared { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Run the profiler through `setpriv` with `privs`.
    fn run(&self, privs: &[&str], args: &[&str]) -> Output {
        // The refusals are ptrace's (the perf source has its own rules).
        Command::new("setpriv")
            .env("PROFILER_SAMPLER", "ptrace")
            .args(privs)
            .arg("--")
            .arg(self.path("profiler"))
            .args(args)
            .output()
            .unwrap()
    }
}

/// An agent whose stderr is collected as it comes.
struct Agent {
    child: Child,
    text: Arc<Mutex<String>>,
}

impl Agent {
    fn spawn(args: &[&str]) -> Agent {
        let mut child = common::ptrace_agent()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let text = Arc::new(Mutex::new(String::new()));
        let t = Arc::clone(&text);
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut t = t.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        });
        Agent { child, text }
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "agent did not finish");
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the reader take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        (status, self.text())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn state(pid: i32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s[s.rfind(')')? + 2..].chars().next())
        .unwrap_or('?')
}

/// The refusal came before the target was touched.
fn refused_before_attaching(o: &Output, fx: &Fixture, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains(needle), "expected {needle:?} in: {e}");
    assert!(!e.contains("attached to"), "seized before refusing: {e}");
    assert_eq!(tracer_pid(fx.pid()), Some(0));
}

#[test]
fn outputs_are_checked_before_the_first_sample() {
    let _l = live();
    let fx = Fixture::spawn("c_workers", &[]);
    let pid = fx.pid().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let attach = |out: &str| profiler(&["attach", "--pid", &pid, "-d", "1", "-o", out]);

    // A directory nothing can be created in: found now, not after the session.
    refused_before_attaching(
        &attach("/proc/"),
        &fx,
        "cannot write envelopes to /proc/: cannot create files in /proc/",
    );
    // Parents are not created; a file on the path is not a directory.
    let missing = tmp.path().join("no/such");
    let o = attach(missing.join("p.folded").to_str().unwrap());
    refused_before_attaching(
        &o,
        &fx,
        &format!("directory {} does not exist", missing.display()),
    );
    let o = attach(&format!("{}/", missing.display()));
    refused_before_attaching(&o, &fx, "does not exist");
    assert!(!tmp.path().join("no").exists(), "nothing created");
    let file = tmp.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let o = attach(file.join("p.folded").to_str().unwrap());
    refused_before_attaching(&o, &fx, &format!("{} is not a directory", file.display()));
    let o = attach(&format!("{}/env/", file.display()));
    refused_before_attaching(&o, &fx, &format!("{} is not a directory", file.display()));

    // An envelope directory that the agent's user cannot write (another user's, 0755).
    if !is_root() || !has("setpriv", &["--version"]) {
        common::skip("the other-user part needs root and setpriv");
        return;
    }
    let shared = Shared::new();
    let theirs = shared.path("root-only");
    std::fs::create_dir(&theirs).unwrap();
    let o = shared.run(
        &NOBODY,
        &[
            "attach",
            "--pid",
            &pid,
            "-d",
            "1",
            "-o",
            &format!("{}/", theirs.display()),
        ],
    );
    refused_before_attaching(
        &o,
        &fx,
        &format!(
            "cannot write envelopes to {}/: cannot create files in {}/: Permission denied",
            theirs.display(),
            theirs.display()
        ),
    );
}

#[test]
fn a_write_that_fails_at_the_end_fails_the_run() {
    let _l = live();
    let fx = Fixture::spawn("c_workers", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let env_dir = tmp.path().join("env");
    let out = format!("{}/", env_dir.display());
    let agent = Agent::spawn(&[
        "attach",
        "--pid",
        &fx.pid().to_string(),
        "-d",
        "2",
        "-o",
        &out,
    ]);
    agent.wait_for("attached to");
    // The directory goes away under the agent: its only chunk, written at the end, fails.
    std::fs::remove_dir_all(&env_dir).unwrap();
    let (status, e) = agent.finish();
    assert_eq!(status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!(
            "NOT WRITTEN: envelopes {out}: 1 chunk(s) could not be written"
        )) && e.contains("nothing was written there"),
        "{e}"
    );
    assert!(
        e.contains("profiler: error: 1 output(s) not written"),
        "{e}"
    );
    assert!(!e.contains("envelopes written to"), "{e}");
    assert!(e.contains("sentry: 0 chunks written"), "{e}");
    assert_eq!(tracer_pid(fx.pid()), Some(0));
}

#[test]
fn an_empty_dsn_flag_is_an_error_an_empty_variable_is_not_set() {
    let _l = live();
    let fx = Fixture::spawn("c_workers", &[]);
    let pid = fx.pid().to_string();
    let o = profiler(&["attach", "--pid", &pid, "-d", "0.3", "--dsn", ""]);
    refused_before_attaching(&o, &fx, "profiler: error: --dsn is empty");
    let o = common::ptrace_agent()
        .args(["attach", "--pid", &pid, "-d", "0.3"])
        .env("SENTRY_DSN", "")
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("attached to") && !e.contains("sentry:"), "{e}");
}

/// A local user who creates the spool directory first (or makes it writable for everyone)
/// must not get the agent to send the files they put there: the agent refuses it.
#[test]
fn spool_directories_of_other_users_are_refused() {
    let _l = live();
    if !is_root() || !has("setpriv", &["--version"]) {
        common::skip("needs root and setpriv");
        return;
    }
    let fx = Fixture::spawn("c_workers", &[]);
    let pid = fx.pid().to_string();
    let shared = Shared::new();
    let dsn = "http://e3b0c44298fc1c149afbf4c8996fb924@127.0.0.1:9/42".to_string();
    let with_spool = |spool: &Path| {
        profiler(&[
            "attach",
            "--pid",
            &pid,
            "-d",
            "1",
            "--dsn",
            &dsn,
            "--spool-dir",
            spool.to_str().unwrap(),
        ])
    };
    // Created by the other user, before the agent, in a directory everyone may write to
    // (as /var/tmp).
    use std::os::unix::fs::PermissionsExt;
    let public = shared.path("public");
    std::fs::create_dir(&public).unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = public.join("planted");
    let o = Command::new("setpriv")
        .args(NOBODY)
        .args(["--", "mkdir", "-m", "0700"])
        .arg(&planted)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    refused_before_attaching(
        &with_spool(&planted),
        &fx,
        &format!(
            "cannot use spool directory {}: {} belongs to uid 65534, not to the agent's uid 0",
            planted.display(),
            planted.display()
        ),
    );
    // ... and a spool inside it: the other user could swap it for their own.
    refused_before_attaching(
        &with_spool(&planted.join("spool")),
        &fx,
        &format!("its parent {} belongs to uid 65534", planted.display()),
    );
    // Writable by everyone.
    refused_before_attaching(
        &with_spool(&public),
        &fx,
        "is writable by other users (mode 1777)",
    );
    // The agent's own directory inside it is fine (the parent belongs to root).
    let o = with_spool(&public.join("mine"));
    assert!(o.status.success(), "{}", stderr(&o));
    // The other way round: an agent running as that user refuses root's directory.
    let roots = shared.path("roots");
    std::fs::create_dir(&roots).unwrap();
    let o = shared.run(
        &NOBODY,
        &[
            "attach",
            "--pid",
            &pid,
            "-d",
            "1",
            "--dsn",
            &dsn,
            "--spool-dir",
            roots.to_str().unwrap(),
        ],
    );
    refused_before_attaching(&o, &fx, "belongs to uid 0, not to the agent's uid 65534");
}

#[test]
fn a_zombie_is_named() {
    let _l = live();
    // A child that exits and is not waited for stays a zombie.
    let mut child = Command::new("true").spawn().unwrap();
    let z = child.id() as i32;
    wait_until("the zombie", || state(z) == 'Z');
    let me = std::process::id();
    for args in [vec!["attach", "--pid"], vec!["doctor", "--pid"]] {
        let zs = z.to_string();
        let mut a = args.clone();
        a.push(&zs);
        let o = profiler(&a);
        let text = format!("{}{}", stderr(&o), String::from_utf8_lossy(&o.stdout));
        assert_eq!(o.status.code(), Some(1), "{text}");
        assert!(
            text.contains(&format!(
                "process {z} (true) is a zombie: it has exited and its parent, process {me} ("
            )) && text.contains("nothing left to profile"),
            "{text}"
        );
        assert!(!text.contains("permission denied"), "{text}");
    }
    child.wait().unwrap();
}

#[test]
fn the_live_threads_of_a_process_whose_main_thread_exited_are_profiled() {
    let _l = live();
    let fx = Fixture::spawn("leader_exit", &[]);
    let pid = fx.pid();
    wait_until("the main thread's exit", || state(pid) == 'Z');
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p.folded");
    let o = profiler(&[
        "attach",
        "--idle",
        "--pid",
        &pid.to_string(),
        "-d",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains(&format!(
            "the main thread of {pid} has exited (pthread_exit)"
        )) && e.contains("attached to")
            && e.contains(": 2 threads,"),
        "{e}"
    );
    assert!(e.contains("its main thread had exited"), "{e}");
    // The exited main thread is no thread the kernel refused.
    assert!(!e.contains("would not let the agent trace"), "{e}");
    let folded = std::fs::read_to_string(&out).unwrap();
    // Both threads, named, with complete stacks read through their own /proc entries.
    assert!(
        folded.contains("leader-spin;clone3;start_thread;spin;leader_exit_spin "),
        "{folded}"
    );
    assert!(
        folded.contains("leader-nap;") && folded.contains(";leader_exit_nap;"),
        "{folded}"
    );
    let o = profiler(&["doctor", "--pid", &pid.to_string()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("main thread: exited (pthread_exit) while 2 other threads"),
        "{text}"
    );
    assert!(
        text.contains("ptrace: seized 2 threads, read a thread's registers"),
        "{text}"
    );
    assert_eq!(tracer_pid(pid), Some(0));
}

#[test]
fn another_tracer_is_named_by_its_process() {
    let _l = live();
    let fx = Fixture::spawn("c_workers", &[]);
    let pid = fx.pid().to_string();
    let first = KillOnDrop(
        common::ptrace_agent()
            .args(["attach", "--pid", &pid, "-d", "20"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the first agent", || tracer_pid(fx.pid()).unwrap_or(0) != 0);
    // TracerPid is its sampler thread; the message names the process.
    let tracer_thread = tracer_pid(fx.pid()).unwrap();
    let agent = first.0.id();
    assert_ne!(tracer_thread as u32, agent);
    let want = format!(
        "already traced by process {agent} (profiler), from its thread {tracer_thread} (sampler)"
    );
    let o = profiler(&["attach", "--pid", &pid, "-d", "1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    let o = profiler(&["doctor", "--pid", &pid]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&want));
}

#[test]
fn a_target_already_stopped_is_reported() {
    let _l = live();
    let fx = Fixture::spawn("c_workers", &[]);
    let pid = nix::unistd::Pid::from_raw(fx.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    wait_until("the stop", || state(fx.pid()) == 'T');
    let o = profiler(&["attach", "--pid", &fx.pid().to_string(), "-d", "1"]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("samples: 0 in"), "{e}");
    assert!(
        e.contains("the target was already stopped (SIGSTOP or SIGTSTP) when the agent came and stayed stopped")
            && e.contains(&format!("resume it with `kill -CONT {}`", fx.pid())),
        "{e}"
    );
    // Still stopped, untraced.
    assert_eq!(state(fx.pid()), 'T');
    assert_eq!(tracer_pid(fx.pid()), Some(0));
    let o = profiler(&["doctor", "--pid", &fx.pid().to_string()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("[ warn ] state: stopped (SIGSTOP"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // A target that runs throughout gets no such line.
    let o = profiler(&["attach", "--pid", &fx.pid().to_string(), "-d", "0.5"]);
    assert!(!stderr(&o).contains("SIGSTOP"), "{}", stderr(&o));
}

#[test]
fn a_pid_file_holding_garbage_is_reported_once() {
    let _l = live();
    let fx = Fixture::spawn("c_workers", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = tmp.path().join("svc.pid");
    std::fs::write(&pid_file, "starting...\n").unwrap();
    let agent = Agent::spawn(&[
        "attach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "-d",
        "1",
    ]);
    let garbage = format!(
        "--pid-file {} holds \"starting...\", which is not a process id; waiting",
        pid_file.display()
    );
    agent.wait_for(&garbage);
    // Several looks later, still one line.
    std::thread::sleep(Duration::from_millis(700));
    std::fs::write(&pid_file, "999999999").unwrap();
    agent.wait_for("names process 999999999, which does not exist; waiting");
    std::fs::write(&pid_file, format!("{}\n", fx.pid())).unwrap();
    let (status, e) = agent.finish();
    assert!(status.success(), "{e}");
    assert_eq!(e.matches(&garbage).count(), 1, "{e}");
    assert_eq!(e.matches("which does not exist").count(), 1, "{e}");
    assert!(e.contains(&format!("attached to {}", fx.pid())), "{e}");
}

/// The causes of a refusal come from the target's status: capabilities the agent lacks
/// (the target is pid 1 of its own PID namespace, holding all of root's), and a user
/// namespace the agent's capabilities do not reach.
#[test]
fn refusals_name_the_cause_from_the_targets_status() {
    let _l = live();
    if !is_root()
        || !has("setpriv", &["--version"])
        || !has("unshare", &["--pid", "--fork", "true"])
    {
        common::skip("needs root, setpriv and unshare");
        return;
    }
    let ns = KillOnDrop(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(fixture_path("c_workers"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut target = None;
    wait_until("the namespace's init", || {
        target =
            std::fs::read_to_string(format!("/proc/{}/task/{}/children", ns.0.id(), ns.0.id()))
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse::<i32>().ok());
        target.is_some_and(|t| state(t) != '?')
    });
    let target = target.unwrap();
    let _kill = KillPid(target);
    let shared = Shared::new();
    // Root, but without CAP_SYS_PTRACE.
    let o = shared.run(
        &["--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"],
        &["attach", "--pid", &target.to_string(), "-d", "1"],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!(
            "permission denied attaching to process {target} (c_workers; pid 1 of its own PID namespace: a container's init)"
        )),
        "{e}"
    );
    assert!(
        e.contains("it holds capabilities the agent does not (CAP_SYS_PTRACE, "),
        "{e}"
    );
    assert!(
        !e.contains("another user") && !e.contains("security module"),
        "{e}"
    );
    assert_eq!(tracer_pid(target), Some(0));

    // From inside a user namespace, a process outside it.
    if !has("unshare", &["--user", "--map-root-user", "true"]) {
        common::skip("the user namespace part needs unprivileged user namespaces");
        return;
    }
    let fx = Fixture::spawn("c_workers", &[]);
    let o = Command::new("unshare")
        .env("PROFILER_SAMPLER", "ptrace")
        .args(["--user", "--map-root-user", "--"])
        .arg(shared.path("profiler"))
        .args(["attach", "--pid", &fx.pid().to_string(), "-d", "1"])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("the agent runs inside a user namespace (user:[")
            && e.contains("and the target is outside it")
            && e.contains("fix: run the agent in the target's user namespace"),
        "{e}"
    );
    assert!(!e.contains("another user"), "the uid is not the cause: {e}");
}

/// Kills a process that is not our child.
struct KillPid(i32);

impl Drop for KillPid {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
