//! `profiler doctor --pid N`: checks, without profiling, everything an attach needs —
//! the agent's privileges (capabilities, Yama ptrace_scope, seccomp), which stack source
//! `--sampler auto` takes (perf_event_open or ptrace) and why, the target (exists,
//! not a kernel thread, not traced by another), namespaces, a real seize-and-detach, a
//! memory read, and for every module whether its file, unwind tables and debug info can be
//! read — and says what to fix.

use std::fmt;
use std::path::PathBuf;

use anyhow::Result;

use crate::modules::ModuleMap;
use crate::os::files::LiveFiles;
use crate::os::permissions::{self, CAP_SYS_PTRACE, Privileges, TargetFacts};
use crate::os::ptrace::Tracer;
use crate::os::{perf, proc, vm};
use crate::procmaps;
use crate::types::Pid;
use profiler_symbolize::{DebugInfo, Symbolizer};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// Profiling works, but something is missing (names, lines).
    Warn,
    /// Profiling cannot work until this is fixed.
    Fail,
}

/// One check.
#[derive(Clone, Debug)]
pub struct Check {
    /// Outcome.
    pub level: Level,
    /// What was checked.
    pub what: String,
    /// What was found.
    pub detail: String,
    /// What to do about it.
    pub fix: Option<String>,
}

/// All checks for one target.
#[derive(Clone, Debug)]
pub struct Report {
    /// The target.
    pub pid: Pid,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when nothing failed.
    pub fn can_attach(&self) -> bool {
        self.checks.iter().all(|c| c.level != Level::Fail)
    }

    fn push(&mut self, level: Level, what: &str, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            level,
            what: what.into(),
            detail,
            fix,
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "profiler doctor: process {}", self.pid)?;
        for c in &self.checks {
            let tag = match c.level {
                Level::Ok => "  ok  ",
                Level::Warn => " warn ",
                Level::Fail => " FAIL ",
            };
            writeln!(f, "[{tag}] {}: {}", c.what, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(f, "         fix: {fix}")?;
            }
        }
        let fails = self
            .checks
            .iter()
            .filter(|c| c.level == Level::Fail)
            .count();
        let warns = self
            .checks
            .iter()
            .filter(|c| c.level == Level::Warn)
            .count();
        if fails == 0 {
            writeln!(f, "=> can profile process {} ({warns} warnings)", self.pid)
        } else {
            writeln!(
                f,
                "=> cannot profile process {}: {fails} problems to fix",
                self.pid
            )
        }
    }
}

/// Run every check against `pid`.
pub fn run(pid: Pid, debug_dirs: &[PathBuf]) -> Result<Report> {
    let mut r = Report {
        pid,
        checks: Vec::new(),
    };
    let me = Privileges::current();

    // The agent.
    let caps = if me.has_sys_ptrace() {
        (Level::Ok, "CAP_SYS_PTRACE is effective".to_string(), None)
    } else if me.cap_bnd & (1 << CAP_SYS_PTRACE) == 0 {
        (
            Level::Warn,
            "no CAP_SYS_PTRACE, and the capability bounding set does not allow it".to_string(),
            Some(if me.in_container {
                "start the container with --cap-add=SYS_PTRACE (Kubernetes: securityContext.capabilities.add: [SYS_PTRACE])".to_string()
            } else {
                "run as root, or with CAP_SYS_PTRACE granted".to_string()
            }),
        )
    } else {
        (
            Level::Warn,
            format!(
                "no CAP_SYS_PTRACE (euid {}): only own processes can be traced",
                me.euid
            ),
            Some("run with sudo or `sudo setcap cap_sys_ptrace+ep $(which profiler)`".into()),
        )
    };
    r.push(caps.0, "capabilities", caps.1, caps.2);
    match me.ptrace_scope {
        None => r.push(
            Level::Ok,
            "yama ptrace_scope",
            "Yama not present".into(),
            None,
        ),
        Some(0) => r.push(
            Level::Ok,
            "yama ptrace_scope",
            "0 (classic ptrace permissions)".into(),
            None,
        ),
        Some(1) if me.has_sys_ptrace() => r.push(
            Level::Ok,
            "yama ptrace_scope",
            "1, and the agent has CAP_SYS_PTRACE".into(),
            None,
        ),
        Some(1) => r.push(
            Level::Warn,
            "yama ptrace_scope",
            "1: only a parent may trace its children without CAP_SYS_PTRACE".into(),
            Some("grant CAP_SYS_PTRACE, or `sudo sysctl kernel.yama.ptrace_scope=0`".into()),
        ),
        Some(2) if me.has_sys_ptrace() => r.push(
            Level::Ok,
            "yama ptrace_scope",
            "2, and the agent has CAP_SYS_PTRACE".into(),
            None,
        ),
        Some(v) => r.push(
            Level::Fail,
            "yama ptrace_scope",
            format!("{v}: tracing is restricted"),
            Some(if v >= 3 {
                "ptrace_scope 3 cannot be lowered until reboot".into()
            } else {
                "run with CAP_SYS_PTRACE".into()
            }),
        ),
    }
    r.push(
        Level::Ok,
        "seccomp",
        match me.seccomp {
            0 => "no filter".into(),
            1 => "strict mode".into(),
            _ => "a filter is active (ptrace is allowed by Docker's default profile when SYS_PTRACE is added, on kernels >= 4.8)".into(),
        },
        None,
    );
    // The sampler's real-time priority, tried on a thread of its own as the sampler would.
    let realtime = std::thread::spawn(crate::os::signals::raise_priority)
        .join()
        .unwrap_or(false);
    if realtime {
        r.push(
            Level::Ok,
            "sampler priority",
            "real-time (SCHED_FIFO) granted".into(),
            None,
        );
    } else {
        r.push(
            Level::Warn,
            "sampler priority",
            "no real-time priority (needs CAP_SYS_NICE or an RLIMIT_RTPRIO allowance): on a busy machine ticks run late, some are skipped, and samples lean towards system-call exits".into(),
            Some(if me.in_container {
                "start the container with --cap-add=SYS_NICE (Kubernetes: securityContext.capabilities.add: [SYS_NICE])".into()
            } else {
                "run as root, or with CAP_SYS_NICE granted".into()
            }),
        );
    }

    // The target.
    if pid == std::process::id() as Pid {
        r.push(
            Level::Fail,
            "target",
            "this is the profiler itself".into(),
            None,
        );
        return Ok(r);
    }
    if !proc::proc_dir(pid).exists() {
        r.push(
            Level::Fail,
            "target",
            format!("no process {pid} in the agent's PID namespace"),
            Some(if me.in_container {
                "share the target's PID namespace (docker --pid=container:<name>, Kubernetes shareProcessNamespace: true) and use the pid as seen here".into()
            } else {
                "check the pid (`pgrep -l NAME`), or use --process-name".into()
            }),
        );
        return Ok(r);
    }
    let name = proc::process_name(pid).unwrap_or_default();
    if proc::is_kernel_thread(pid) {
        r.push(
            Level::Fail,
            "target",
            format!("{pid} ({name}) is a kernel thread"),
            None,
        );
        return Ok(r);
    }
    let facts = TargetFacts::read(pid);
    if facts.is_zombie() {
        r.push(
            Level::Fail,
            "target",
            facts.zombie_message(pid),
            Some("profile a live process".into()),
        );
        return Ok(r);
    }
    r.push(Level::Ok, "target", facts.describe(pid), None);
    if facts.main_thread_exited() {
        r.push(
            Level::Ok,
            "main thread",
            format!(
                "exited (pthread_exit) while {} other threads run on: the agent profiles those",
                facts.live_threads
            ),
            None,
        );
    }
    if facts.state == Some('T') {
        r.push(
            Level::Warn,
            "state",
            "stopped (SIGSTOP or SIGTSTP): a stopped process runs no code, so there is nothing \
             to sample until it runs again"
                .into(),
            Some(format!("`kill -CONT {pid}`")),
        );
    }
    // Which stack source `--sampler auto` takes.
    let probe = perf::probe(pid);
    match &probe {
        perf::Probe::Full => r.push(
            Level::Ok,
            "sampler",
            "perf_event_open permitted (on-CPU samples, context-switch stacks of blocked threads): `--sampler auto` uses it, nothing is stopped; ptrace is the fallback".into(),
            None,
        ),
        perf::Probe::UserOnly => r.push(
            Level::Ok,
            "sampler",
            format!(
                "perf_event_open permitted for user-mode samples only (kernel.perf_event_paranoid {}, no CAP_PERFMON): `--sampler auto` uses it; stacks of blocked threads are read from /proc when they block",
                perf::paranoid().map_or("?".into(), |p| p.to_string())
            ),
            Some("grant CAP_PERFMON (`sudo setcap cap_perfmon,cap_sys_ptrace+ep $(which profiler)`) for context-switch stacks".into()),
        ),
        perf::Probe::Refused(why) => r.push(
            Level::Warn,
            "sampler",
            format!("perf_event_open not permitted ({why}): `--sampler auto` uses ptrace, which stops each thread briefly per sample"),
            None,
        ),
    }
    if let Some(t) = &facts.tracer {
        let perf_ok = !matches!(probe, perf::Probe::Refused(_));
        r.push(
            if perf_ok { Level::Warn } else { Level::Fail },
            "tracer",
            format!(
                "already traced by {t}{}",
                if perf_ok {
                    ": `--sampler ptrace` cannot attach; the perf source samples it anyway"
                } else {
                    ""
                }
            ),
            Some("stop that debugger or profiler first".into()),
        );
    }
    let me_s = std::process::id().to_string();
    // Through a live thread: the namespaces of a main thread that exited are gone.
    let p_s = proc::live_task(pid).unwrap_or(pid).to_string();
    for (kind, label) in [("pid", "PID namespace"), ("mnt", "mount namespace")] {
        match (proc::namespace(&me_s, kind), proc::namespace(&p_s, kind)) {
            (Some(a), Some(b)) if a == b => {
                r.push(Level::Ok, label, "shared with the agent".into(), None)
            }
            (Some(_), Some(_)) => r.push(
                Level::Ok,
                label,
                "different from the agent's: files are read through /proc/PID/root".into(),
                None,
            ),
            _ => r.push(
                Level::Warn,
                label,
                "cannot be compared (no access to /proc/PID/ns)".into(),
                None,
            ),
        }
    }

    // A real seize and detach.
    match Tracer::attach(pid) {
        Ok(mut t) => {
            let threads = t.threads().len();
            let first = proc::live_task(pid).unwrap_or(pid);
            let sampled = t.sample(first, |regs| regs.sp()).is_ok();
            drop(t);
            r.push(
                if sampled { Level::Ok } else { Level::Warn },
                "ptrace",
                format!(
                    "seized {threads} threads{}, detached",
                    if sampled {
                        ", read a thread's registers"
                    } else {
                        ""
                    }
                ),
                None,
            );
        }
        Err(e) if !matches!(probe, perf::Probe::Refused(_)) => r.push(
            Level::Warn,
            "ptrace",
            format!(
                "{} (only `--sampler ptrace` needs it: the perf source is permitted)",
                permissions::explain(pid, e.errno)
            ),
            None,
        ),
        Err(e) => r.push(
            Level::Fail,
            "ptrace",
            permissions::explain(pid, e.errno),
            None,
        ),
    }

    // Memory and modules.
    let maps = match proc::read_maps(pid) {
        Ok(t) => procmaps::parse(&t),
        Err(e) => {
            r.push(
                Level::Fail,
                "maps",
                format!("cannot read /proc/{pid}/maps: {e}"),
                Some("the agent needs ptrace access to the target (see above)".into()),
            );
            return Ok(r);
        }
    };
    if let Some(m) = maps
        .iter()
        .find(|m| m.read && m.path == "[stack]")
        .or(maps.first())
    {
        let mut b = [0u8; 8];
        let n = vm::read(proc::live_task(pid).unwrap_or(pid), m.start, &mut b);
        r.push(
            if n == 8 { Level::Ok } else { Level::Fail },
            "memory",
            if n == 8 {
                "process_vm_readv works".into()
            } else {
                "process_vm_readv failed".into()
            },
            (n != 8).then(|| "the agent needs ptrace access to the target (see above)".into()),
        );
    }
    let source = LiveFiles::new(pid);
    let mut modules = ModuleMap::new();
    modules.update(&maps, &source);
    let mut sym = Symbolizer::new(debug_dirs.to_vec());
    let (mut lines, mut symbols_only, mut nothing, mut unreadable) =
        (0, Vec::new(), Vec::new(), Vec::new());
    for m in modules.all() {
        if m.is_vdso() {
            continue;
        }
        let Some(desc) = &m.desc else {
            unreadable.push(format!(
                "{} ({})",
                m.path,
                m.load_error.as_deref().unwrap_or("?")
            ));
            continue;
        };
        let cfi = m.unwind.as_ref().is_some_and(|u| u.has_cfi());
        if !cfi {
            r.push(
                Level::Warn,
                "unwind tables",
                format!(
                    "{} has no .eh_frame/.debug_frame: stacks through it rely on frame pointers",
                    m.path
                ),
                None,
            );
        }
        match sym.debug_info(desc) {
            DebugInfo::Nothing => nothing.push(m.path.clone()),
            DebugInfo::SymbolsOnly => symbols_only.push(m.path.clone()),
            _ => lines += 1,
        }
    }
    if !unreadable.is_empty() {
        r.push(
            Level::Warn,
            "module files",
            format!("cannot read {}: their frames stay module+offset", unreadable.join(", ")),
            Some("the agent reads them through /proc/PID/root (or /proc/PID/map_files): it needs ptrace access and read permission (CAP_DAC_READ_SEARCH for files of other users)".into()),
        );
    }
    r.push(
        Level::Ok,
        "debug info",
        format!(
            "{lines} of {} modules have file and line information",
            modules.all().iter().filter(|m| !m.is_vdso()).count()
        ),
        None,
    );
    if !symbols_only.is_empty() {
        r.push(
            Level::Warn,
            "debug info",
            format!("function names only (no lines, no inlined frames) for: {}", symbols_only.join(", ")),
            Some("install the matching debug packages (e.g. libc6-dbg, <pkg>-dbgsym) in the target's image, or point --debug-dir at a directory with .build-id/xx/rest.debug files".into()),
        );
    }
    if !nothing.is_empty() {
        r.push(
            Level::Warn,
            "debug info",
            format!("no symbols at all for: {}", nothing.join(", ")),
            Some("provide separate debug files (--debug-dir) or upload them to Sentry for server-side symbolication".into()),
        );
    }
    Ok(r)
}
