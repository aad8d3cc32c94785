//! Finding the process to profile: checks on a pid, waiting for a pid file or a process
//! name, and telling one process from its successor (pid and start time).

use std::time::Duration;

use anyhow::{Result, bail};

use crate::config::Target;
use crate::os::proc;
use crate::types::Pid;

/// Checks that need no ptrace: the pid exists, is not us, is not a kernel thread.
pub fn check_target(pid: Pid) -> Result<()> {
    if pid <= 0 {
        bail!("invalid pid {pid}");
    }
    if pid == std::process::id() as Pid {
        bail!("refusing to attach to the profiler's own process ({pid})");
    }
    if !proc::proc_dir(pid).exists() {
        bail!("no such process: {pid}");
    }
    if proc::is_kernel_thread(pid) {
        bail!("process {pid} is a kernel thread: it has no user-space stack to sample");
    }
    if proc::status_field(pid, "Tgid").is_some_and(|t| t != pid.to_string()) {
        let tgid = proc::status_field(pid, "Tgid").unwrap_or_default();
        bail!("{pid} is a thread of process {tgid}: attach to {tgid} to profile every thread");
    }
    Ok(())
}

/// Wait for the process `target` names, other than `last` (the one just profiled, by pid
/// and start time). None when the agent is asked to stop meanwhile.
pub fn wait_for_target(
    target: &Target,
    last: Option<(Pid, u64)>,
    progress: &mut dyn FnMut(&str),
) -> Option<Pid> {
    let mut announced = false;
    loop {
        let found = match target {
            Target::Pid(p) => Some(*p),
            Target::PidFile(f) => std::fs::read_to_string(f)
                .ok()
                .and_then(|t| t.trim().parse::<Pid>().ok())
                .filter(|&p| p > 0 && proc::proc_dir(p).exists()),
            Target::Name(n) => find_by_name(n),
        };
        if let Some(p) = found
            && last.is_none_or(|(lp, ls)| lp != p || proc::start_time(p) != Some(ls))
        {
            return Some(p);
        }
        if !announced {
            announced = true;
            let what = match target {
                Target::Pid(p) => format!("process {p}"),
                Target::PidFile(f) => format!("a live process in {}", f.display()),
                Target::Name(n) => format!("a process named {n}"),
            };
            progress(&format!("waiting for {what}"));
        }
        if let crate::os::signals::Wake::Stop(_) =
            crate::os::signals::wait(Duration::from_millis(200))
        {
            return None;
        }
    }
}

/// The oldest process whose `comm` or executable file name is `name` (not the agent, not a
/// kernel thread).
pub fn find_by_name(name: &str) -> Option<Pid> {
    let me = std::process::id() as Pid;
    let comm_name: String = name.chars().take(15).collect();
    let mut best: Option<(u64, Pid)> = None;
    for pid in proc::list_pids() {
        if pid == me {
            continue;
        }
        let Some(stat) = proc::stat(pid) else {
            continue;
        };
        if stat.is_kernel_thread() {
            continue;
        }
        if stat.comm != comm_name && proc::exe_name(pid).as_deref() != Some(name) {
            continue;
        }
        if best.is_none_or(|(s, p)| (stat.start_time, pid) < (s, p)) {
            best = Some((stat.start_time, pid));
        }
    }
    best.map(|(_, p)| p)
}
