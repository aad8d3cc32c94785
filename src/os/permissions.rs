//! Turning a failed attach into a cause and a fix the user can act on: not root and no
//! CAP_SYS_PTRACE, Yama's ptrace_scope, a container started without SYS_PTRACE, a seccomp
//! filter, or another tracer already attached.

use nix::errno::Errno;

use super::proc;
use crate::types::Pid;

/// Linux capability number of CAP_SYS_PTRACE.
pub const CAP_SYS_PTRACE: u32 = 19;

/// Facts about the agent's own privileges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Privileges {
    /// Effective uid.
    pub euid: u32,
    /// Effective capability mask.
    pub cap_eff: u64,
    /// Bounding capability mask (what the container allows at all).
    pub cap_bnd: u64,
    /// Seccomp mode (0 none, 1 strict, 2 filter).
    pub seccomp: u32,
    /// Yama ptrace_scope, when Yama is present.
    pub ptrace_scope: Option<u32>,
    /// True when the agent seems to run in a container.
    pub in_container: bool,
}

impl Privileges {
    /// Read the agent's own privileges.
    pub fn current() -> Privileges {
        let me = std::process::id() as Pid;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let hex = |k: &str| {
            proc::status_field_in(&status, k)
                .and_then(|v| u64::from_str_radix(&v, 16).ok())
                .unwrap_or(0)
        };
        let _ = me;
        Privileges {
            euid: nix::unistd::geteuid().as_raw(),
            cap_eff: hex("CapEff"),
            cap_bnd: hex("CapBnd"),
            seccomp: proc::status_field_in(&status, "Seccomp")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            ptrace_scope: proc::read_small("/proc/sys/kernel/yama/ptrace_scope")
                .and_then(|v| v.parse().ok()),
            in_container: in_container(),
        }
    }

    /// True when CAP_SYS_PTRACE is effective.
    pub fn has_sys_ptrace(&self) -> bool {
        self.cap_eff & (1 << CAP_SYS_PTRACE) != 0
    }
}

fn in_container() -> bool {
    std::path::Path::new("/.dockerenv").exists()
        || std::path::Path::new("/run/.containerenv").exists()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::fs::read_to_string("/proc/1/cgroup").is_ok_and(|c| {
            c.contains("docker") || c.contains("kubepods") || c.contains("containerd")
        })
}

/// Explain why attaching to `pid` failed with `errno`, naming the cause and the fix.
pub fn explain(pid: Pid, errno: Errno) -> String {
    explain_with(
        pid,
        errno,
        &Privileges::current(),
        proc::tracer_pid(pid),
        target_uid(pid),
    )
}

fn target_uid(pid: Pid) -> Option<u32> {
    proc::status_field(pid, "Uid")?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The explanation, from facts gathered by the caller (pure, for tests).
pub fn explain_with(
    pid: Pid,
    errno: Errno,
    me: &Privileges,
    tracer: Option<Pid>,
    target_uid: Option<u32>,
) -> String {
    match errno {
        Errno::ESRCH => format!("no such process: {pid} (it may have exited)"),
        Errno::EPERM | Errno::EACCES => {
            if let Some(t) = tracer {
                let name = proc::process_name(t).unwrap_or_else(|| "?".into());
                return format!(
                    "process {pid} is already traced by process {t} ({name}); only one tracer \
                     may attach at a time: stop that debugger or profiler first"
                );
            }
            let root_like = me.euid == 0 || me.has_sys_ptrace();
            let mut msg = format!("permission denied attaching to process {pid}: ");
            if !me.has_sys_ptrace() && me.in_container && me.cap_bnd & (1 << CAP_SYS_PTRACE) == 0 {
                msg.push_str(
                    "this container lacks the SYS_PTRACE capability (CAP_SYS_PTRACE). Run it with \
                     `--cap-add=SYS_PTRACE` (docker/podman) or add `SYS_PTRACE` to \
                     securityContext.capabilities.add (Kubernetes), and share the target's \
                     PID namespace (`--pid=container:<name>` or shareProcessNamespace: true)",
                );
            } else if me.seccomp == 2 && root_like {
                msg.push_str(
                    "a seccomp filter blocks ptrace in the agent; run the container with a \
                     profile that allows ptrace (e.g. `--security-opt seccomp=unconfined`, or \
                     Docker 19.03+ which allows ptrace when SYS_PTRACE is added)",
                );
            } else if !root_like {
                match me.ptrace_scope {
                    Some(3) => msg
                        .push_str("kernel.yama.ptrace_scope is 3 (no attach at all) until reboot"),
                    Some(2) => msg.push_str(
                        "kernel.yama.ptrace_scope is 2 (admin only): run as root or grant \
                         CAP_SYS_PTRACE (`sudo setcap cap_sys_ptrace+ep $(which profiler)`)",
                    ),
                    Some(1) => msg.push_str(
                        "kernel.yama.ptrace_scope is 1 (only a parent may trace its children): \
                         run as root, grant CAP_SYS_PTRACE (`sudo setcap cap_sys_ptrace+ep \
                         $(which profiler)`), or `sudo sysctl kernel.yama.ptrace_scope=0`",
                    ),
                    _ if target_uid.is_some_and(|u| u != me.euid) => msg.push_str(
                        "the process belongs to another user: run as root or with \
                         CAP_SYS_PTRACE (`sudo profiler attach ...`)",
                    ),
                    _ => msg.push_str(
                        "not root and no CAP_SYS_PTRACE: run with sudo or grant the capability \
                         (`sudo setcap cap_sys_ptrace+ep $(which profiler)`)",
                    ),
                }
            } else if me.ptrace_scope == Some(3) {
                msg.push_str(
                    "kernel.yama.ptrace_scope is 3: no process may be traced until reboot",
                );
            } else {
                msg.push_str(
                    "the kernel refused although the agent has CAP_SYS_PTRACE; the target may \
                     be protected by an LSM (SELinux/AppArmor) or be in another user namespace",
                );
            }
            msg
        }
        e => format!("cannot attach to process {pid}: {}", e.desc()),
    }
}

/// Capabilities the agent keeps when it has them: ptrace itself, perf events
/// (`perf_event_open` on another user's process, and kernel-side context-switch samples),
/// reading the target's files whatever their owner, the sampler's real-time priority, and
/// opening
/// `/proc/PID/map_files` (deleted binaries).
pub const KEEP: [caps::Capability; 5] = [
    caps::Capability::CAP_SYS_PTRACE,
    caps::Capability::CAP_PERFMON,
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_SYS_NICE,
    caps::Capability::CAP_CHECKPOINT_RESTORE,
];

/// Give up every capability the agent does not need (from the effective, permitted,
/// inheritable, ambient and, when allowed, bounding sets) and forbid gaining new ones
/// (`PR_SET_NO_NEW_PRIVS`). Returns the capabilities kept.
pub fn drop_privileges() -> Result<Vec<caps::Capability>, String> {
    use caps::CapSet;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0);
    }
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| e.to_string())?;
    let keep: caps::CapsHashSet = KEEP
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    if permitted.contains(&caps::Capability::CAP_SETPCAP) {
        for c in caps::all() {
            if !keep.contains(&c) {
                let _ = caps::drop(None, CapSet::Bounding, c);
            }
        }
    }
    let _ = caps::clear(None, CapSet::Ambient);
    caps::clear(None, CapSet::Inheritable).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| e.to_string())?;
    let mut kept: Vec<caps::Capability> = keep.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Privileges {
        Privileges {
            euid: 1000,
            ptrace_scope: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn names_ptrace_scope() {
        let m = explain_with(7, Errno::EPERM, &user(), None, Some(1000));
        assert!(m.contains("ptrace_scope is 1"), "{m}");
        assert!(m.contains("CAP_SYS_PTRACE"), "{m}");
    }

    #[test]
    fn names_container_flag() {
        let me = Privileges {
            euid: 0,
            in_container: true,
            cap_bnd: 0,
            ..Default::default()
        };
        let m = explain_with(7, Errno::EPERM, &me, None, Some(0));
        assert!(m.contains("--cap-add=SYS_PTRACE"), "{m}");
    }

    #[test]
    fn names_other_tracer() {
        let m = explain_with(7, Errno::EPERM, &user(), Some(1), None);
        assert!(m.contains("already traced by process 1"), "{m}");
    }

    #[test]
    fn other_user_without_yama() {
        let me = Privileges {
            euid: 1000,
            ptrace_scope: None,
            ..Default::default()
        };
        let m = explain_with(7, Errno::EPERM, &me, None, Some(0));
        assert!(m.contains("another user"), "{m}");
    }

    #[test]
    fn no_such_process() {
        assert!(explain_with(7, Errno::ESRCH, &user(), None, None).contains("no such process"));
    }
}
