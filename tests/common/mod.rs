//! Shared helpers for the integration tests: locating the fixture programs built by
//! `make -C fixtures` (see `fixtures/README.md`), running them, following their stdout
//! protocol (`ready <pid>` first, then program-specific lines) and reaping them.
#![allow(dead_code)]

pub mod formats;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The agent binary, set to sample with ptrace (`PROFILER_SAMPLER=ptrace`, which a
/// `--sampler` argument overrides): the tests that use it check ptrace's own behaviour
/// (tracing, signals, detaching, pauses). `tests/perf_source.rs` and the Sentry session
/// test run the perf source.
pub fn ptrace_agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_profiler"));
    c.env("PROFILER_SAMPLER", "ptrace");
    c
}

/// Ok when this process may open perf events on `pid` (the perf source can run), else
/// the kernel's reason: tests of the perf source skip, saying so, where it cannot.
pub fn perf_permitted(pid: i32) -> Result<(), String> {
    use profiler::os::perf::{EventKind, EventSpec, PerfEvent, online_cpus};
    let spec = EventSpec {
        kind: EventKind::CpuClock {
            period_ns: 1_000_000,
        },
        stack_bytes: 4096,
        exclude_kernel: true,
        side_band: false,
    };
    PerfEvent::open(&spec, pid, online_cpus()[0])
        .map(drop)
        .map_err(|e| format!("perf_event_open on {pid}: {}", e.desc()))
}

/// How long [`Fixture::spawn`] waits for the `ready <pid>` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// `fixtures/bin` of this crate.
pub fn fixtures_bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("bin")
}

/// The separate debug-info directory of the fixtures (`fixtures/bin/debug`): holds
/// `.build-id/xx/rest.debug` for `c_workers` and `c_workers_stripped_buildid`.
pub fn fixtures_debug_dir() -> PathBuf {
    fixtures_bin_dir().join("debug")
}

/// A child process killed and reaped when dropped (a test that fails does not leave it).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A module to symbolize: the file at `path` as the target would map it, its build-id,
/// the host's root.
pub fn module_desc(path: &std::path::Path) -> profiler::symbolize::ModuleDesc {
    let data = std::fs::read(path).unwrap();
    let build_id = profiler::elf::facts(&data).and_then(|f| f.build_id);
    profiler::symbolize::ModuleDesc {
        path: path.to_string_lossy().into_owned(),
        data: bytes::Bytes::from_owner(data),
        build_id,
        root: "/".into(),
    }
}

/// Path of the fixture binary `name` (`fixtures/bin/<name>`).
///
/// Panics with "run `make fixtures` first" when it has not been built.
pub fn fixture_path(name: &str) -> PathBuf {
    let path = fixtures_bin_dir().join(name);
    if !path.exists() {
        panic!(
            "fixture {} not found: run `make fixtures` first (or `make -C fixtures`)",
            path.display()
        );
    }
    path
}

/// A running fixture program. Killed and reaped when dropped.
pub struct Fixture {
    name: String,
    child: Child,
    pid: i32,
    lines: Receiver<String>,
    /// Every stdout line received after `ready`, in order.
    history: Vec<String>,
    /// Lines of `history` already returned by [`Fixture::wait_for_line`].
    consumed: usize,
    exited: Option<ExitStatus>,
}

impl Fixture {
    /// Starts `fixtures/bin/<name>` with `args` and waits (up to [`READY_TIMEOUT`]) for its
    /// `ready <pid>` line. Panics if the program cannot start, exits, or prints anything
    /// else first. stderr is inherited, so the program's complaints show in test output.
    pub fn spawn(name: &str, args: &[&str]) -> Fixture {
        match Fixture::try_spawn(name, args) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Fixture::spawn`] returning the failure instead of panicking.
    pub fn try_spawn(name: &str, args: &[&str]) -> Result<Fixture, String> {
        let path = fixture_path(name);
        let mut child = Command::new(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start the stdout reader: {e}"))?;

        let first = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(err) => {
                let _ = child.kill();
                let status = child.wait().ok();
                return Err(match err {
                    RecvTimeoutError::Timeout => {
                        format!("{name} printed no `ready` line within {READY_TIMEOUT:?}")
                    }
                    RecvTimeoutError::Disconnected => {
                        format!("{name} closed stdout before `ready` (status {status:?})")
                    }
                });
            }
        };
        let pid = first
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse::<i32>().ok());
        let expected = i32::try_from(child.id()).expect("pid fits i32");
        if pid != Some(expected) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{name}: expected `ready {expected}` as the first line, got {first:?}"
            ));
        }
        Ok(Fixture {
            name: name.to_string(),
            child,
            pid: expected,
            lines: rx,
            history: Vec::new(),
            consumed: 0,
            exited: None,
        })
    }

    /// The program's name in `fixtures/bin`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Process id (also the main thread's id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The underlying child process.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    fn pull_available(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.history.push(line);
        }
        if self.exited.is_some() {
            // The program is gone: let the reader thread drain the pipe to its end.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.lines.recv_timeout(left) {
                    Ok(line) => self.history.push(line),
                    Err(_) => break,
                }
            }
        }
    }

    /// Every stdout line printed after `ready` so far (whether or not already matched by
    /// [`Fixture::wait_for_line`]); once the program has exited, all of them.
    pub fn stdout_lines(&mut self) -> Vec<String> {
        self.pull_available();
        self.history.clone()
    }

    /// Waits up to `timeout` for the next line, after the last one this method returned,
    /// that starts with `prefix`; returns it whole. Lines skipped over stay in
    /// [`Fixture::stdout_lines`]. `None` on timeout or when stdout closed without a match.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pull_available();
            while self.consumed < self.history.len() {
                let i = self.consumed;
                self.consumed += 1;
                if self.history[i].starts_with(prefix) {
                    return Some(self.history[i].clone());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.lines.recv_timeout(left) {
                Ok(line) => self.history.push(line),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    // Closed: whatever arrived is already in history; one more scan.
                    self.pull_available();
                    if self.consumed == self.history.len() {
                        return None;
                    }
                }
            }
        }
    }

    /// The exit status if the program has exited (without waiting).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits up to `timeout` for the program to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills (SIGKILL) and reaps the program; returns its status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
        self.exited
    }

    /// Thread ids and names (`comm`) of the running program.
    pub fn threads(&self) -> Vec<(i32, String)> {
        threads(self.pid)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `TracerPid` of process (or thread) `pid` from /proc: `Some(0)` when not traced, `None`
/// when the process does not exist or the field is unreadable.
pub fn tracer_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Thread ids and names (`comm`) of process `pid`, sorted by tid; empty if it is gone.
pub fn threads(pid: i32) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<(i32, String)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|tid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            Some((tid, comm.trim_end().to_string()))
        })
        .collect();
    out.sort();
    out
}

/// Parses the `<hex>` of a `loaded a 0x7f...` line from `dlopen_app`.
pub fn parse_loaded_address(line: &str) -> Option<u64> {
    let hex = line.split_whitespace().nth(2)?;
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok()
}

/// Environment variable that turns every [`skip`] into a failure: set to `1` where the
/// machine is known to have what every test needs (CI: root, `unshare`, `setpriv`, glibc's
/// debug file, kernel threads visible).
pub const REQUIRE_ALL: &str = "PROFILER_REQUIRE_ALL";

/// Environment variable naming the file every [`skip`] appends its line to (default:
/// `skipped-tests.txt` in cargo's `CARGO_TARGET_TMPDIR`).
pub const SKIP_LOG: &str = "PROFILER_SKIP_LOG";

/// The calling test checks less than its name says because this machine lacks something
/// (`reason`): the caller returns (or leaves out that part) after this call.
///
/// A skip must not look like a pass. The line `SKIPPED <binary>::<test>: <reason>` goes to
/// the process's stderr directly (the test harness captures `eprintln!` of passing tests,
/// not this), and is appended to the skip log, which `.ci/run` counts and prints at the end.
/// With `PROFILER_REQUIRE_ALL=1` the skip panics instead: the test fails.
#[track_caller]
pub fn skip(reason: &str) {
    let test = current_test();
    if std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1") {
        panic!(
            "{test} cannot run here ({reason}), and {REQUIRE_ALL}=1 says this machine has what \
             every test needs (unset it, or set it to 0, to let the test skip)"
        );
    }
    let line = format!("SKIPPED {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    let log = std::env::var_os(SKIP_LOG)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt"));
    // One short write with O_APPEND: lines of test processes running side by side do not mix.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        let _ = writeln!(std::io::stderr(), "cannot append to {}: {e}", log.display());
    }
}

/// `<test binary>::<test>`: the binary's name without cargo's hash, and the test harness's
/// name for the thread that runs the test.
fn current_test() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => s,
        })
        .unwrap_or_else(|| "?".into());
    let thread = std::thread::current();
    format!("{binary}::{}", thread.name().unwrap_or("?"))
}

/// A folded-stacks file as (frames root first, the first being the thread name, count);
/// lines that are not `stack count` are skipped.
pub fn read_folded(path: &std::path::Path) -> Vec<(Vec<String>, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| {
            let (stack, n) = l.rsplit_once(' ')?;
            Some((
                stack.split(';').map(str::to_string).collect(),
                n.parse().ok()?,
            ))
        })
        .collect()
}

/// True when a demangled function name is the standard library's by its namespace (C++
/// `std::` and `__gnu_cxx::`, Rust `std::`, `core::`, `alloc::`, also as the self type of
/// an impl), as the tests judge it independently of the agent's own rule.
pub fn std_library_name(function: &str) -> bool {
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
}
