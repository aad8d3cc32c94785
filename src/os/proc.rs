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

/// The target's root directory as the agent can open it (`/proc/PID/root`): paths of the
/// target's files are opened below it, so a target in another mount namespace works.
pub fn root_dir(pid: Pid) -> PathBuf {
    proc_dir(pid).join("root")
}

/// The text of `/proc/PID/maps`.
pub fn read_maps(pid: Pid) -> io::Result<String> {
    std::fs::read_to_string(proc_dir(pid).join("maps"))
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

/// The value of a `Key:` line in status text.
pub fn status_field_in(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// The pid of the process tracing `pid`, if any.
pub fn tracer_pid(pid: Pid) -> Option<Pid> {
    status_field(pid, "TracerPid")?
        .parse()
        .ok()
        .filter(|&p| p != 0)
}

/// True when `pid` is a kernel thread (PF_KTHREAD in `/proc/PID/stat` flags).
pub fn is_kernel_thread(pid: Pid) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Ok(stat) = std::fs::read_to_string(proc_dir(pid).join("stat")) else {
        return false;
    };
    // Fields after the parenthesised comm, which may itself contain spaces or ')'.
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    // after = " S ppid pgrp session tty tpgid flags ..." : flags is the 7th field.
    after
        .split_whitespace()
        .nth(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
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
    }

    #[test]
    fn status_parsing() {
        let s = "Name:\tdemo\nTracerPid:\t42\nUid:\t0\t0\t0\t0\n";
        assert_eq!(status_field_in(s, "TracerPid").as_deref(), Some("42"));
        assert_eq!(status_field_in(s, "Missing"), None);
    }
}
