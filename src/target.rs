//! Finding the process to profile: checks on a pid, waiting for a pid file or a process
//! name, and telling one process from its successor (pid and start time).

use std::time::Duration;

use anyhow::{Result, bail};

use crate::config::Target;
use crate::os::permissions::TargetFacts;
use crate::os::proc;
use crate::types::Pid;

/// Checks that need no ptrace: the pid exists, is not us, is not a kernel thread, is not a
/// zombie.
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
    if proc::stat(pid).is_some_and(|s| proc::is_exited_state(s.state))
        && proc::live_task(pid).is_none()
    {
        bail!(TargetFacts::read(pid).zombie_message(pid));
    }
    Ok(())
}

/// What a pid file says.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PidFile {
    /// Missing or unreadable: nothing to say yet.
    Missing,
    /// A live process.
    Live(Pid),
    /// A pid with no process (yet, or any more).
    NoProcess(Pid),
    /// Not a pid at all: the text read (shortened).
    Garbage(String),
}

fn read_pid_file(path: &std::path::Path) -> PidFile {
    let Ok(bytes) = std::fs::read(path) else {
        return PidFile::Missing;
    };
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned();
    let t = text.trim();
    if t.is_empty() {
        // Being written: the next look will tell.
        return PidFile::Missing;
    }
    match t.parse::<Pid>() {
        Ok(p) if p > 0 && proc::proc_dir(p).exists() => PidFile::Live(p),
        Ok(p) if p > 0 => PidFile::NoProcess(p),
        _ => PidFile::Garbage(t.chars().take(40).collect()),
    }
}

/// Wait for the process `target` names, other than `last` (the one just profiled, by pid
/// and start time). None when the agent is asked to stop meanwhile.
pub fn wait_for_target(
    target: &Target,
    last: Option<(Pid, u64)>,
    progress: &mut dyn FnMut(&str),
) -> Option<Pid> {
    let mut announced = false;
    // What the pid file said when last reported: one line per new content.
    let mut reported: Option<PidFile> = None;
    loop {
        let found = match target {
            Target::Pid(p) => Some(*p),
            Target::PidFile(f) => {
                let seen = read_pid_file(f);
                let line = match &seen {
                    PidFile::Garbage(text) => Some(format!(
                        "--pid-file {} holds {text:?}, which is not a process id; waiting for \
                         it to name a live process",
                        f.display()
                    )),
                    PidFile::NoProcess(p) => Some(format!(
                        "--pid-file {} names process {p}, which does not exist; waiting for it \
                         to name a live process",
                        f.display()
                    )),
                    PidFile::Missing | PidFile::Live(_) => None,
                };
                if reported.as_ref() != Some(&seen) {
                    if let Some(l) = line {
                        progress(&l);
                        announced = true;
                    }
                    reported = Some(seen.clone());
                }
                match seen {
                    PidFile::Live(p) => Some(p),
                    _ => None,
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_contents() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("svc.pid");
        assert_eq!(read_pid_file(&f), PidFile::Missing);
        std::fs::write(&f, "  \n").unwrap();
        assert_eq!(read_pid_file(&f), PidFile::Missing);
        let me = std::process::id() as Pid;
        std::fs::write(&f, format!("{me}\n")).unwrap();
        assert_eq!(read_pid_file(&f), PidFile::Live(me));
        std::fs::write(&f, "999999999\n").unwrap();
        assert_eq!(read_pid_file(&f), PidFile::NoProcess(999_999_999));
        std::fs::write(&f, "pid=12 (svc)\n").unwrap();
        assert_eq!(read_pid_file(&f), PidFile::Garbage("pid=12 (svc)".into()));
        std::fs::write(&f, "-4").unwrap();
        assert_eq!(read_pid_file(&f), PidFile::Garbage("-4".into()));
        std::fs::write(&f, "x".repeat(100)).unwrap();
        assert_eq!(read_pid_file(&f), PidFile::Garbage("x".repeat(40)));
    }
}
