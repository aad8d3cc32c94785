//! Reading `/proc/PID/...`: raw text and small facts. Parsing of maps lives in `procmaps`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::types::{Pid, Tid};

/// `/proc/PID`.
pub fn proc_dir(pid: Pid) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// True for the state of a task that has exited (`Z` zombie, `X` dead).
pub fn is_exited_state(state: char) -> bool {
    matches!(state, 'Z' | 'X')
}

/// A live thread of process `pid`: `pid` itself while its main thread runs, else the first
/// thread that has not exited (a main thread that called `pthread_exit` while others run
/// on is a zombie). None when every thread has exited.
pub fn live_task(pid: Pid) -> Option<Tid> {
    if stat(pid).is_some_and(|s| !is_exited_state(s.state)) {
        return Some(pid);
    }
    list_tasks(pid)
        .ok()?
        .into_iter()
        .find(|&t| thread_stat(pid, t).is_some_and(|s| !is_exited_state(s.state)))
}

/// The `/proc` directory holding process `pid`'s memory map, root and executable:
/// `/proc/PID`, or `/proc/PID/task/TID` of a live thread once the main thread has exited
/// (the main thread's own entries are then empty or unreadable).
pub fn task_dir(pid: Pid) -> PathBuf {
    match live_task(pid) {
        Some(t) if t != pid => proc_dir(pid).join("task").join(t.to_string()),
        _ => proc_dir(pid),
    }
}

/// The target's root directory as the agent can open it (`/proc/PID/root`): paths of the
/// target's files are opened below it, so a target in another mount namespace works.
pub fn root_dir(pid: Pid) -> PathBuf {
    task_dir(pid).join("root")
}

/// The text of `/proc/PID/maps` (through a live thread once the main thread has exited).
pub fn read_maps(pid: Pid) -> io::Result<String> {
    std::fs::read_to_string(task_dir(pid).join("maps"))
}

/// The process's auxiliary vector (`/proc/PID/auxv`): what the kernel told its dynamic
/// linker at exec (where its program headers are, among others).
pub fn read_auxv(pid: Pid) -> io::Result<Vec<u8>> {
    std::fs::read(proc_dir(pid).join("auxv"))
}

/// Thread ids listed in `/proc/PID/task`.
pub fn list_tasks(pid: Pid) -> io::Result<Vec<Tid>> {
    let mut tids: Vec<Tid> = std::fs::read_dir(proc_dir(pid).join("task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// A thread's name (`comm`), without the trailing newline.
pub fn thread_name(pid: Pid, tid: Tid) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
    Some(s.trim_end_matches('\n').to_string())
}

/// A process's name (`comm`).
pub fn process_name(pid: Pid) -> Option<String> {
    let s = std::fs::read_to_string(proc_dir(pid).join("comm")).ok()?;
    Some(s.trim_end_matches('\n').to_string())
}

/// The value of a `Key:` line of `/proc/PID/status`.
pub fn status_field(pid: Pid, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(proc_dir(pid).join("status")).ok()?;
    status_field_in(&s, key)
}

/// The pid process `pid` knows itself by: in its own PID namespace (the last `NSpid`
/// value), which names its `/tmp/perf-PID.map`.
pub fn ns_pid(pid: Pid) -> Option<Pid> {
    status_field(pid, "NSpid")?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The value of a `Key:` line in status text.
pub fn status_field_in(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// The thread tracing `pid`, if any (`TracerPid` names the tracer's thread, not its
/// process: see [`tgid_of`]).
pub fn tracer_pid(pid: Pid) -> Option<Tid> {
    status_field(pid, "TracerPid")?
        .parse()
        .ok()
        .filter(|&p| p != 0)
}

/// The process (thread group) a thread belongs to.
pub fn tgid_of(tid: Tid) -> Option<Pid> {
    status_field(tid, "Tgid")?.parse().ok()
}

/// The fields of `/proc/PID/status` that say who may trace a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Real, effective, saved and filesystem uids.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gids.
    pub gids: [u32; 4],
    /// Permitted capabilities.
    pub cap_prm: u64,
    /// Effective capabilities.
    pub cap_eff: u64,
    /// Bounding capabilities.
    pub cap_bnd: u64,
    /// The pid in each PID namespace, from the reader's down to the process's own.
    pub nspid: Vec<Pid>,
    /// The tracer's thread id (0: not traced).
    pub tracer: Tid,
    /// Seccomp mode (0 none, 1 strict, 2 filter).
    pub seccomp: u32,
}

impl Status {
    /// Parse the text of a `status` file; missing fields stay at their defaults.
    pub fn parse(text: &str) -> Status {
        let ids = |k: &str| {
            let mut out = [0u32; 4];
            if let Some(v) = status_field_in(text, k) {
                for (o, f) in out.iter_mut().zip(v.split_whitespace()) {
                    *o = f.parse().unwrap_or(0);
                }
            }
            out
        };
        let hex = |k: &str| {
            status_field_in(text, k)
                .and_then(|v| u64::from_str_radix(&v, 16).ok())
                .unwrap_or(0)
        };
        let num = |k: &str| status_field_in(text, k).and_then(|v| v.parse::<i64>().ok());
        Status {
            uids: ids("Uid"),
            gids: ids("Gid"),
            cap_prm: hex("CapPrm"),
            cap_eff: hex("CapEff"),
            cap_bnd: hex("CapBnd"),
            nspid: status_field_in(text, "NSpid")
                .map(|v| {
                    v.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect()
                })
                .unwrap_or_default(),
            tracer: num("TracerPid")
                .and_then(|v| Tid::try_from(v).ok())
                .unwrap_or(0),
            seccomp: num("Seccomp")
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
        }
    }
}

/// `/proc/PID/status`, parsed (`pid` may be `self`).
pub fn status(pid: &str) -> Option<Status> {
    Some(Status::parse(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
    ))
}

/// The fields of `/proc/PID/stat` the agent uses. The command name is in parentheses and
/// may itself hold spaces and `)`, so the fields are counted from the last `)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// `comm`, as the kernel shows it (at most 15 bytes).
    pub comm: String,
    /// One-letter state (`R`, `S`, `D`, `t`, `Z`, ...).
    pub state: char,
    /// The parent's pid.
    pub ppid: Pid,
    /// The process flags (`PF_*`).
    pub flags: u64,
    /// Start time in clock ticks after boot: with the pid, a process's identity.
    pub start_time: u64,
}

impl Stat {
    /// Parse the text of a `stat` file; None when it does not have the expected shape.
    pub fn parse(text: &str) -> Option<Stat> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text.get(open + 1..close)?.to_string();
        // After the comm: state(3) ppid pgrp session tty_nr tpgid flags(9) ... starttime(22).
        let mut rest = text.get(close + 1..)?.split_ascii_whitespace();
        let state = rest.next()?.chars().next()?;
        let mut fields = rest;
        let ppid = fields.next()?.parse().ok()?;
        let flags = fields.nth(4)?.parse().ok()?;
        let start_time = fields.nth(12)?.parse().ok()?;
        Some(Stat {
            comm,
            state,
            ppid,
            flags,
            start_time,
        })
    }

    /// True for a kernel thread (`PF_KTHREAD`): it has no user-space stack.
    pub fn is_kernel_thread(&self) -> bool {
        const PF_KTHREAD: u64 = 0x0020_0000;
        self.flags & PF_KTHREAD != 0
    }
}

/// `/proc/PID/stat`, parsed.
pub fn stat(pid: Pid) -> Option<Stat> {
    Stat::parse(&std::fs::read_to_string(proc_dir(pid).join("stat")).ok()?)
}

/// `/proc/PID/task/TID/stat`, parsed.
pub fn thread_stat(pid: Pid, tid: Tid) -> Option<Stat> {
    Stat::parse(&std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?)
}

/// A thread's `stat` file kept open and read again from its start: opening a `/proc`
/// file costs tens of microseconds on some machines (path walk, permission checks),
/// reading one already open about a microsecond.
pub struct StatFile {
    file: File,
    buf: Vec<u8>,
}

impl StatFile {
    /// Open `/proc/PID/task/TID/stat`; None when the thread is gone.
    pub fn open(pid: Pid, tid: Tid) -> Option<StatFile> {
        let file = File::open(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
        Some(StatFile {
            file,
            buf: vec![0; 1024],
        })
    }

    /// The thread's stat now; None once it is gone (reaped: the read fails).
    pub fn read(&mut self) -> Option<Stat> {
        let n = self.file.read_at(&mut self.buf, 0).ok()?;
        Stat::parse(std::str::from_utf8(&self.buf[..n]).ok()?)
    }
}

/// True when `pid` is a kernel thread.
pub fn is_kernel_thread(pid: Pid) -> bool {
    stat(pid).is_some_and(|s| s.is_kernel_thread())
}

/// A process's start time (clock ticks since boot): with the pid, its identity.
pub fn start_time(pid: Pid) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// The namespace a process is in (`/proc/PID/ns/KIND`, e.g. `pid`, `mnt`), as the link
/// target that identifies it; `pid` may be `self`.
pub fn namespace(pid: &str, kind: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()
}

/// Every process id listed in `/proc`.
pub fn list_pids() -> Vec<Pid> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The file name of a process's executable (without a ` (deleted)` suffix).
pub fn exe_name(pid: Pid) -> Option<String> {
    let p = std::fs::read_link(task_dir(pid).join("exe")).ok()?;
    Some(
        p.file_name()?
            .to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string(),
    )
}

/// The path of a process's executable as it sees it (without a ` (deleted)` suffix).
pub fn exe_path(pid: Pid) -> Option<String> {
    let p = std::fs::read_link(task_dir(pid).join("exe")).ok()?;
    Some(
        p.to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string(),
    )
}

/// Watches a thread without disturbing it, through files kept open and re-read in place:
/// `/proc/PID/task/TID/schedstat` (CPU time and how often it was switched in; about 1 µs a
/// read) and `/proc/PID/task/TID/syscall` (where it waits, if blocked; about 3 µs). A thread
/// that still waits at the stack pointer and pc of its last sample has the same stack, so
/// it need not be stopped again; and one that has not been switched in since it was seen
/// waiting is still waiting there.
pub struct ThreadWatch {
    syscall: File,
    schedstat: Option<File>,
    buf: [u8; 256],
}

impl ThreadWatch {
    /// Open the thread's files; None when the thread is gone or the kernel lacks them.
    pub fn open(pid: Pid, tid: Tid) -> Option<ThreadWatch> {
        let syscall = File::open(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
        let schedstat = File::open(format!("/proc/{pid}/task/{tid}/schedstat")).ok();
        Some(ThreadWatch {
            syscall,
            schedstat,
            buf: [0; 256],
        })
    }

    /// The user stack pointer and pc of the thread if it is blocked (sleeping, in a
    /// system call or not), None when it is running or runnable.
    pub fn blocked_at(&mut self) -> Option<(u64, u64)> {
        let n = self.syscall.read_at(&mut self.buf, 0).ok()?;
        parse_syscall(std::str::from_utf8(&self.buf[..n]).ok()?)
    }

    /// The thread's CPU time (ns) and the number of times it was switched in. Equal
    /// readings mean it has not been switched in between them, unless it was running
    /// throughout (the CPU time of a running thread advances only at scheduler ticks).
    /// None when the kernel does not keep these counts.
    pub fn sched(&mut self) -> Option<(u64, u64)> {
        let n = self.schedstat.as_ref()?.read_at(&mut self.buf, 0).ok()?;
        parse_schedstat(std::str::from_utf8(&self.buf[..n]).ok()?)
    }
}

/// Parse a `schedstat` file: `RUNTIME_NS WAIT_NS TIMESLICES`; None for the all-zero line of
/// a kernel that does not keep them.
pub fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<u64>().ok());
    let runtime = fields.next()??;
    let _wait = fields.next()??;
    let switched_in = fields.next()??;
    (switched_in > 0).then_some((runtime, switched_in))
}

/// Parse a `syscall` file: `running`, or `NR ARG1..ARG6 SP PC`, or `-1 SP PC`.
pub fn parse_syscall(text: &str) -> Option<(u64, u64)> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() < 3 {
        return None;
    }
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    Some((
        hex(fields[fields.len() - 2])?,
        hex(fields[fields.len() - 1])?,
    ))
}

/// Where a thread is, per its `syscall` file, read without stopping it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallState {
    /// Running or ready to run.
    Running,
    /// Blocked: in system call `nr` (None when blocked outside one, e.g. on a page
    /// fault), with its user stack pointer and pc.
    Blocked {
        /// System call number.
        nr: Option<i64>,
        /// User stack pointer.
        sp: u64,
        /// User pc.
        pc: u64,
    },
}

/// Parse a `syscall` file fully: `running`, `NR ARG1..ARG6 SP PC` or `-1 SP PC`.
pub fn parse_syscall_state(text: &str) -> Option<SyscallState> {
    let t = text.trim();
    if t == "running" {
        return Some(SyscallState::Running);
    }
    let (sp, pc) = parse_syscall(t)?;
    let nr = t.split_whitespace().next()?.parse::<i64>().ok()?;
    Some(SyscallState::Blocked {
        nr: (nr >= 0).then_some(nr),
        sp,
        pc,
    })
}

/// `/proc/PID/task/TID/syscall`, parsed; None when it cannot be read.
pub fn thread_syscall(pid: Pid, tid: Tid) -> Option<SyscallState> {
    parse_syscall_state(&std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?)
}

/// Raise the agent's soft limit on open files to its hard limit, as far as allowed: the
/// sampler keeps two `/proc` files open per traced thread, so a target with a few hundred
/// threads would otherwise exhaust the usual soft limit of 1024. Returns the limit now in
/// force.
pub fn raise_open_files_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// Keep the agent's memory flat over days: large blocks (a Sentry chunk being built and
/// encoded is megabytes) come from their own mappings, returned to the system when freed.
/// glibc otherwise raises its mapping threshold to the largest block freed so far, after
/// which such blocks are carved from the heap and, fragmented by the small allocations
/// around them, never given back: measured with `make soak` (100 Hz, 60 s chunks, a target
/// creating 500 threads a second), RSS grew 16% in 6 minutes that way, and stays within the
/// size of one open chunk with the threshold fixed. Does nothing on other C libraries.
pub fn fix_malloc_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes glibc's allocator settings; called at start, before
    // the agent's threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Read a small text file fully (sysctl values and the like).
pub fn read_small(path: &str) -> Option<String> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    Some(s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_counted_from_the_last_paren() {
        let line = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 1000 200 18446744073709551615";
        let s = Stat::parse(line).unwrap();
        assert_eq!(s.comm, "a (b) c");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.flags, 4194560);
        assert_eq!(s.start_time, 987654);
        assert!(!s.is_kernel_thread());
        let k = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 2 0 0";
        assert!(Stat::parse(k).unwrap().is_kernel_thread());
        // Truncated or hostile text: None, never a panic.
        for bad in [
            "",
            "(",
            ")",
            "1 (x)",
            "1 (x) S",
            "1 (x) S 1 2 3 4 5 6",
            "1 x) S 1",
        ] {
            assert_eq!(Stat::parse(bad), None, "{bad:?}");
        }
        let me = stat(std::process::id() as Pid).unwrap();
        assert_eq!(start_time(std::process::id() as Pid), Some(me.start_time));
    }

    #[test]
    fn own_process_facts() {
        let pid = std::process::id() as Pid;
        assert!(list_tasks(pid).unwrap().contains(&pid));
        assert!(!read_maps(pid).unwrap().is_empty());
        assert!(!is_kernel_thread(pid));
        assert!(status_field(pid, "Name").is_some());
        // A sleeping thread reports where it waits, the same each time.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ttx, trx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            ttx.send(nix::unistd::gettid().as_raw()).unwrap();
            rx.recv().unwrap();
        });
        let sleeper = trx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        if let Some(mut w) = ThreadWatch::open(pid, sleeper) {
            let a = w.blocked_at().expect("blocked in recv");
            assert_eq!(w.blocked_at(), Some(a));
            // Not switched in while it waits (when the kernel keeps the counts).
            if let Some(s) = w.sched() {
                assert_eq!(w.sched(), Some(s));
            }
        }
        tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn open_files_limit_raised_to_the_hard_one() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        // Start below the hard limit (as a login shell's 1024 usually is).
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(512), hard).unwrap();
        let limit = raise_open_files_limit().expect("getrlimit works");
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(limit, soft);
        assert_eq!(soft, hard);
    }

    #[test]
    fn schedstat_parsing() {
        assert_eq!(parse_schedstat("1234 56 7\n"), Some((1234, 7)));
        assert_eq!(parse_schedstat("0 0 0\n"), None);
        assert_eq!(parse_schedstat("12 x 3"), None);
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn syscall_parsing() {
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(
            parse_syscall("230 0x0 0x0 0x7ffd 0x7ffe 0x0 0x0 0x7ffd3490d7e8 0x7f71d1261503\n"),
            Some((0x7ffd3490d7e8, 0x7f71d1261503))
        );
        assert_eq!(parse_syscall("-1 0x7ffc 0x4010\n"), Some((0x7ffc, 0x4010)));
        assert_eq!(parse_syscall(""), None);
        assert_eq!(
            parse_syscall_state("running\n"),
            Some(SyscallState::Running)
        );
        assert_eq!(
            parse_syscall_state("202 0x1 0x0 0x0 0x0 0x0 0x0 0x7ffd 0x7f71\n"),
            Some(SyscallState::Blocked {
                nr: Some(202),
                sp: 0x7ffd,
                pc: 0x7f71
            })
        );
        assert_eq!(
            parse_syscall_state("-1 0x7ffc 0x4010\n"),
            Some(SyscallState::Blocked {
                nr: None,
                sp: 0x7ffc,
                pc: 0x4010
            })
        );
        assert_eq!(parse_syscall_state("x"), None);
    }

    #[test]
    fn status_parsing() {
        let s = "Name:\tdemo\nTracerPid:\t42\nUid:\t0\t0\t0\t0\n";
        assert_eq!(status_field_in(s, "TracerPid").as_deref(), Some("42"));
        assert_eq!(status_field_in(s, "Missing"), None);
        let text = "Name:\tsvc\nTgid:\t4567\nNSpid:\t4567\t1\nTracerPid:\t0\n\
                    Uid:\t1000\t1001\t1002\t1003\nGid:\t5\t6\t7\t8\n\
                    CapPrm:\t000001ffffffffff\nCapEff:\t0000000000080000\n\
                    CapBnd:\t000001fffeffffff\nSeccomp:\t2\n";
        let st = Status::parse(text);
        assert_eq!(st.uids, [1000, 1001, 1002, 1003]);
        assert_eq!(st.gids, [5, 6, 7, 8]);
        assert_eq!(st.cap_prm, 0x1ff_ffff_ffff);
        assert_eq!(st.cap_eff, 1 << 19);
        assert_eq!(st.cap_bnd, 0x1ff_feff_ffff);
        assert_eq!(st.nspid, [4567, 1]);
        assert_eq!(st.seccomp, 2);
        assert_eq!(Status::parse("garbage"), Status::default());
        let me = std::process::id() as Pid;
        assert_eq!(tgid_of(me), Some(me));
        assert_eq!(status("self").unwrap().nspid.last(), Some(&me));
    }
}
