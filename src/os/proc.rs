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

/// Tells whether a thread has run since it was last looked at, from
/// `/proc/PID/task/TID/schedstat` (CPU time) and `/proc/PID/task/TID/stat` (state), read
/// through files kept open. The CPU time of a thread that is on a CPU right now is only
/// brought up to date at scheduler ticks, so a thread in state R always counts as active.
pub struct Activity {
    schedstat: File,
    stat: File,
    buf: [u8; 512],
    last_cpu_ns: Option<u64>,
}

impl Activity {
    /// Open the thread's files; None when the thread is gone or the kernel has no
    /// schedstats.
    pub fn open(pid: Pid, tid: Tid) -> Option<Activity> {
        let schedstat = File::open(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
        let stat = File::open(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
        let mut a = Activity {
            schedstat,
            stat,
            buf: [0; 512],
            last_cpu_ns: None,
        };
        a.cpu_ns()?;
        Some(a)
    }

    /// Nanoseconds the thread has spent on a CPU, as of its last scheduler update.
    pub fn cpu_ns(&mut self) -> Option<u64> {
        let n = self.schedstat.read_at(&mut self.buf, 0).ok()?;
        let text = std::str::from_utf8(&self.buf[..n]).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    /// The thread's scheduler state letter (R, S, D, T, t, Z, ...).
    pub fn state(&mut self) -> Option<u8> {
        let n = self.stat.read_at(&mut self.buf, 0).ok()?;
        let text = &self.buf[..n];
        let close = text.iter().rposition(|&b| b == b')')?;
        text.get(close + 2).copied()
    }

    /// True when the thread may have run since the previous call: it is running or
    /// runnable now, or its CPU time moved. The first call always says true.
    pub fn ran_since_last(&mut self) -> bool {
        let cpu = self.cpu_ns();
        let moved = cpu.is_none() || cpu != self.last_cpu_ns;
        self.last_cpu_ns = cpu;
        moved || self.state() == Some(b'R')
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
    fn own_process_facts() {
        let pid = std::process::id() as Pid;
        assert!(list_tasks(pid).unwrap().contains(&pid));
        assert!(!read_maps(pid).unwrap().is_empty());
        assert!(!is_kernel_thread(pid));
        assert!(status_field(pid, "Name").is_some());
        let tid = nix::unistd::gettid().as_raw();
        if let Some(mut a) = Activity::open(pid, tid) {
            assert!(a.cpu_ns().unwrap() > 0);
            // This thread is running while it reads its own state.
            assert_eq!(a.state(), Some(b'R'));
            assert!(a.ran_since_last());
            assert!(
                a.ran_since_last(),
                "a running thread always counts as active"
            );
        }
    }

    #[test]
    fn kthreadd_is_a_kernel_thread() {
        // pid 2 is kthreadd on a normal kernel; inside a PID namespace it may be anything.
        if process_name(2).as_deref() == Some("kthreadd") {
            assert!(is_kernel_thread(2));
        }
    }

    #[test]
    fn status_parsing() {
        let s = "Name:\tdemo\nTracerPid:\t42\nUid:\t0\t0\t0\t0\n";
        assert_eq!(status_field_in(s, "TracerPid").as_deref(), Some("42"));
        assert_eq!(status_field_in(s, "Missing"), None);
    }
}
