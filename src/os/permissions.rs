//! Turning a failed attach into a cause and a fix the user can act on, from facts read
//! in `/proc` rather than guessed: another tracer (named by its process), a zombie, a user
//! namespace the agent's capabilities do not reach, another user's process, a process
//! holding capabilities the agent lacks, a process that is not dumpable, Yama's
//! ptrace_scope, a container started without SYS_PTRACE, a seccomp filter, and only when
//! none of these applies, a security module.

use nix::errno::Errno;

use super::proc;
use crate::types::{Pid, Tid};

/// Linux capability number of CAP_SYS_PTRACE.
pub const CAP_SYS_PTRACE: u32 = 19;

/// Facts about the agent's own privileges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Privileges {
    /// Real uid (the one the kernel compares with the target's).
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Effective uid.
    pub euid: u32,
    /// Effective capability mask.
    pub cap_eff: u64,
    /// Permitted capability mask (a tracer without CAP_SYS_PTRACE must hold every
    /// capability its target holds).
    pub cap_prm: u64,
    /// Bounding capability mask (what the container allows at all).
    pub cap_bnd: u64,
    /// Seccomp mode (0 none, 1 strict, 2 filter).
    pub seccomp: u32,
    /// Yama ptrace_scope, when Yama is present.
    pub ptrace_scope: Option<u32>,
    /// True when the agent seems to run in a container.
    pub in_container: bool,
    /// The agent's user namespace (`user:[N]`).
    pub userns: Option<String>,
    /// True when that namespace is not the initial one (its uid map is not the identity
    /// over every uid): its capabilities do not reach processes outside it.
    pub userns_nested: bool,
}

impl Privileges {
    /// Read the agent's own privileges.
    pub fn current() -> Privileges {
        let st = proc::status("self").unwrap_or_default();
        let uid_map = proc::read_small("/proc/self/uid_map").unwrap_or_default();
        let identity = uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
        Privileges {
            uid: st.uids[0],
            gid: st.gids[0],
            euid: nix::unistd::geteuid().as_raw(),
            cap_eff: st.cap_eff,
            cap_prm: st.cap_prm,
            cap_bnd: st.cap_bnd,
            seccomp: st.seccomp,
            ptrace_scope: proc::read_small("/proc/sys/kernel/yama/ptrace_scope")
                .and_then(|v| v.parse().ok()),
            in_container: in_container(),
            userns: ns_text(proc::namespace("self", "user")),
            userns_nested: !uid_map.is_empty() && !identity,
        }
    }

    /// True when CAP_SYS_PTRACE is effective.
    pub fn has_sys_ptrace(&self) -> bool {
        self.cap_eff & (1 << CAP_SYS_PTRACE) != 0
    }
}

fn ns_text(link: Option<std::path::PathBuf>) -> Option<String> {
    link.map(|l| l.to_string_lossy().into_owned())
}

fn in_container() -> bool {
    std::path::Path::new("/.dockerenv").exists()
        || std::path::Path::new("/run/.containerenv").exists()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::fs::read_to_string("/proc/1/cgroup").is_ok_and(|c| {
            c.contains("docker") || c.contains("kubepods") || c.contains("containerd")
        })
}

/// The process tracing another one, named by its process rather than by the thread that
/// `TracerPid` gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracerInfo {
    /// The tracer's thread (`TracerPid`).
    pub tid: Tid,
    /// Its process (thread group), when it could be read.
    pub pid: Option<Pid>,
    /// The process's command (`comm`).
    pub name: String,
    /// The thread's name.
    pub thread_name: String,
}

impl TracerInfo {
    /// Who owns tracer thread `tid`.
    pub fn of(tid: Tid) -> TracerInfo {
        let pid = proc::tgid_of(tid);
        TracerInfo {
            tid,
            pid,
            name: pid
                .and_then(proc::process_name)
                .unwrap_or_else(|| "?".into()),
            thread_name: proc::process_name(tid).unwrap_or_else(|| "?".into()),
        }
    }
}

impl std::fmt::Display for TracerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(p) if p == self.tid => write!(f, "process {p} ({})", self.name),
            Some(p) => write!(
                f,
                "process {p} ({}), from its thread {} ({})",
                self.name, self.tid, self.thread_name
            ),
            None => write!(f, "thread {} ({})", self.tid, self.thread_name),
        }
    }
}

/// What `/proc` says about a target, for [`explain_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetFacts {
    /// Its command (`comm`).
    pub name: String,
    /// Its main thread's state (`Z`: exited).
    pub state: Option<char>,
    /// Threads that have not exited.
    pub live_threads: usize,
    /// Its parent: pid and command.
    pub parent: Option<(Pid, String)>,
    /// Its status (ids, capabilities, PID namespaces).
    pub status: Option<proc::Status>,
    /// Who traces it.
    pub tracer: Option<TracerInfo>,
    /// Its user namespace (`user:[N]`), when the agent may read it.
    pub userns: Option<String>,
    /// Owner of `/proc/PID`: the kernel gives a process that is not dumpable to root.
    pub proc_owner: Option<u32>,
}

impl TargetFacts {
    /// Read the facts about `pid`.
    pub fn read(pid: Pid) -> TargetFacts {
        use std::os::unix::fs::MetadataExt;
        let stat = proc::stat(pid);
        let live_threads = proc::list_tasks(pid)
            .unwrap_or_default()
            .into_iter()
            .filter(|&t| proc::thread_stat(pid, t).is_some_and(|s| !proc::is_exited_state(s.state)))
            .count();
        let status = proc::status(&pid.to_string());
        TargetFacts {
            name: proc::process_name(pid).unwrap_or_else(|| "?".into()),
            state: stat.as_ref().map(|s| s.state),
            live_threads,
            parent: stat.as_ref().map(|s| {
                (
                    s.ppid,
                    proc::process_name(s.ppid).unwrap_or_else(|| "?".into()),
                )
            }),
            tracer: status
                .as_ref()
                .map(|s| s.tracer)
                .filter(|&t| t != 0)
                .map(TracerInfo::of),
            status,
            userns: ns_text(proc::namespace(
                &proc::live_task(pid).unwrap_or(pid).to_string(),
                "user",
            )),
            proc_owner: std::fs::metadata(proc::proc_dir(pid)).ok().map(|m| m.uid()),
        }
    }

    /// True when the process has exited and waits for its parent to reap it.
    pub fn is_zombie(&self) -> bool {
        self.state.is_some_and(proc::is_exited_state) && self.live_threads == 0
    }

    /// True when the main thread has exited while other threads run on.
    pub fn main_thread_exited(&self) -> bool {
        self.state.is_some_and(proc::is_exited_state) && self.live_threads > 0
    }

    /// `process PID (name)`, with its pid inside its own PID namespace when that differs.
    pub fn describe(&self, pid: Pid) -> String {
        let inner = self
            .status
            .as_ref()
            .filter(|s| s.nspid.len() > 1)
            .and_then(|s| s.nspid.last().copied());
        match inner {
            Some(1) => format!(
                "process {pid} ({}; pid 1 of its own PID namespace: a container's init)",
                self.name
            ),
            Some(p) => format!(
                "process {pid} ({}; pid {p} in its own PID namespace)",
                self.name
            ),
            None => format!("process {pid} ({})", self.name),
        }
    }

    /// The zombie's explanation.
    pub fn zombie_message(&self, pid: Pid) -> String {
        let parent = self
            .parent
            .as_ref()
            .map_or("its parent".to_string(), |(p, n)| {
                format!("its parent, process {p} ({n}),")
            });
        format!(
            "{} is a zombie: it has exited and {parent} has not collected its exit status \
             yet; there is nothing left to profile (it disappears once the parent calls wait(), \
             or exits)",
            self.describe(pid)
        )
    }
}

/// The names of the capabilities in `mask`, CAP_SYS_PTRACE first; at most `max`, then a count.
pub fn capability_names(mask: u64, max: usize) -> String {
    let mut names: Vec<(u8, String)> = caps::all()
        .into_iter()
        .filter(|c| c.index() < 64 && mask & (1u64 << c.index()) != 0)
        .map(|c| (c.index(), c.to_string()))
        .collect();
    names.sort_by_key(|(i, _)| (u32::from(*i) != CAP_SYS_PTRACE, *i));
    let n = names.len();
    let mut out: Vec<String> = names.into_iter().take(max).map(|(_, s)| s).collect();
    if n > max {
        out.push(format!("and {} more", n - max));
    }
    out.join(", ")
}

/// Explain why attaching to `pid` failed with `errno`, naming the cause and the fix.
pub fn explain(pid: Pid, errno: Errno) -> String {
    explain_with(pid, errno, &Privileges::current(), &TargetFacts::read(pid))
}

fn uid_text(u: u32) -> String {
    if u == 0 {
        "uid 0 (root)".into()
    } else {
        format!("uid {u}")
    }
}

/// The explanation, from facts gathered by the caller (pure, for tests).
pub fn explain_with(pid: Pid, errno: Errno, me: &Privileges, t: &TargetFacts) -> String {
    let who = t.describe(pid);
    if let Some(tracer) = &t.tracer {
        return format!(
            "{who} is already traced by {tracer}; only one tracer may attach at a time: stop \
             that debugger or profiler first"
        );
    }
    if t.is_zombie() {
        return t.zombie_message(pid);
    }
    match errno {
        Errno::ESRCH => format!("no such process: {pid} (it may have exited)"),
        Errno::EPERM | Errno::EACCES => permission_denied(&who, me, t),
        e => format!("cannot attach to {who}: {}", e.desc()),
    }
}

/// Why the kernel refused, following its own order of checks (`__ptrace_may_access`,
/// then Yama): every cause that applies, then the fix.
fn permission_denied(who: &str, me: &Privileges, t: &TargetFacts) -> String {
    let mut causes = Vec::new();
    let sys_ptrace = me.has_sys_ptrace();
    let userns = me.userns_nested && (t.userns.is_none() || t.userns != me.userns);
    if userns {
        causes.push(format!(
            "the agent runs inside a user namespace ({}) and the target is outside it{}: \
             capabilities held in a user namespace do not reach processes outside it",
            me.userns.as_deref().unwrap_or("?"),
            t.userns
                .as_deref()
                .map(|u| format!(" (in {u})"))
                .unwrap_or_default()
        ));
    }
    let mut yama = false;
    if !sys_ptrace && !userns {
        if let Some(st) = &t.status {
            if st.uids[..3].iter().any(|&u| u != me.uid) {
                causes.push(format!(
                    "it belongs to another user: it runs as {} and the agent as {}",
                    uid_text(st.uids[1]),
                    uid_text(me.uid)
                ));
            } else if st.gids[..3].iter().any(|&g| g != me.gid) {
                causes.push(format!(
                    "its group (gid {}) is not the agent's (gid {})",
                    st.gids[1], me.gid
                ));
            } else if t.proc_owner == Some(0) && st.uids[1] != 0 {
                causes.push(
                    "it is not dumpable (a setuid or setgid program, or it called \
                     prctl(PR_SET_DUMPABLE, 0)): only a tracer with CAP_SYS_PTRACE may attach"
                        .into(),
                );
            }
            let lacking = st.cap_prm & !me.cap_prm;
            if lacking != 0 {
                causes.push(format!(
                    "it holds capabilities the agent does not ({}): a tracer without \
                     CAP_SYS_PTRACE may attach only to processes whose capabilities it holds too",
                    capability_names(lacking, 4)
                ));
            }
        }
        match me.ptrace_scope {
            Some(1) => {
                yama = true;
                causes.push(
                    "kernel.yama.ptrace_scope is 1: without CAP_SYS_PTRACE only a parent may \
                     trace its children (or a process the target named with PR_SET_PTRACER)"
                        .into(),
                )
            }
            Some(2) => causes.push(
                "kernel.yama.ptrace_scope is 2: only a process with CAP_SYS_PTRACE may trace"
                    .into(),
            ),
            _ => {}
        }
    }
    if me.ptrace_scope == Some(3) {
        causes.push("kernel.yama.ptrace_scope is 3: no process may be traced".into());
    }
    let mut lsm = false;
    if causes.is_empty() {
        if me.seccomp == 2 {
            causes.push("a seccomp filter blocks ptrace in the agent".into());
        } else {
            lsm = true;
            causes.push(
                "nothing in the target's status forbids it (same user or CAP_SYS_PTRACE, \
                 capabilities, user namespace), so a Linux security module (SELinux, AppArmor, \
                 Landlock) refused"
                    .into(),
            );
        }
    }
    let fix = if me.ptrace_scope == Some(3) {
        "ptrace_scope 3 cannot be lowered until reboot".to_string()
    } else if userns {
        "run the agent in the target's user namespace or one above it (on the host, or in the \
         target's container)"
            .into()
    } else if !sys_ptrace && me.in_container && me.cap_bnd & (1 << CAP_SYS_PTRACE) == 0 {
        "this container lacks the SYS_PTRACE capability (CAP_SYS_PTRACE): run it with \
         `--cap-add=SYS_PTRACE` (docker/podman) or add `SYS_PTRACE` to \
         securityContext.capabilities.add (Kubernetes), and share the target's PID namespace \
         (`--pid=container:<name>` or shareProcessNamespace: true)"
            .into()
    } else if !sys_ptrace && me.euid == 0 {
        "give the agent CAP_SYS_PTRACE: it runs as root but without that capability (it was \
         removed from its bounding set, see CapBnd in /proc/self/status; in a container \
         `--cap-add=SYS_PTRACE`)"
            .into()
    } else if !sys_ptrace {
        format!(
            "run as root, or grant CAP_SYS_PTRACE (`sudo setcap cap_sys_ptrace+ep $(which \
             profiler)`){}",
            if yama && causes.len() == 1 {
                ", or `sudo sysctl kernel.yama.ptrace_scope=0`"
            } else {
                ""
            }
        )
    } else if me.seccomp == 2 {
        "run the container with a seccomp profile that allows ptrace (e.g. `--security-opt \
         seccomp=unconfined`, or Docker 19.03+ which allows ptrace when SYS_PTRACE is added)"
            .into()
    } else if lsm {
        "look for the denial in `dmesg` or the audit log (AVC, apparmor=\"DENIED\") and allow \
         ptrace for the agent in that policy"
            .into()
    } else {
        String::new()
    };
    format!(
        "permission denied attaching to {who}: {}; fix: {fix}",
        causes.join("; ")
    )
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
            uid: 1000,
            gid: 1000,
            euid: 1000,
            ptrace_scope: Some(1),
            ..Default::default()
        }
    }

    fn target(uid: u32, cap_prm: u64) -> TargetFacts {
        TargetFacts {
            name: "svc".into(),
            state: Some('S'),
            live_threads: 1,
            status: Some(proc::Status {
                uids: [uid; 4],
                gids: [uid; 4],
                cap_prm,
                nspid: vec![7],
                ..Default::default()
            }),
            proc_owner: Some(uid),
            ..Default::default()
        }
    }

    #[test]
    fn names_ptrace_scope() {
        let m = explain_with(7, Errno::EPERM, &user(), &target(1000, 0));
        assert!(m.contains("ptrace_scope is 1"), "{m}");
        assert!(!m.contains("another user"), "{m}");
        assert!(m.contains("CAP_SYS_PTRACE"), "{m}");
        assert!(m.contains("ptrace_scope=0"), "{m}");
    }

    #[test]
    fn names_container_flag() {
        let me = Privileges {
            in_container: true,
            cap_bnd: 0,
            ..Default::default()
        };
        let m = explain_with(7, Errno::EPERM, &me, &target(0, 0));
        assert!(m.contains("--cap-add=SYS_PTRACE"), "{m}");
    }

    #[test]
    fn names_the_tracer_process_not_its_thread() {
        let mut t = target(1000, 0);
        t.tracer = Some(TracerInfo {
            tid: 23499,
            pid: Some(23490),
            name: "profiler".into(),
            thread_name: "sampler".into(),
        });
        let m = explain_with(7, Errno::EPERM, &user(), &t);
        assert!(
            m.contains(
                "already traced by process 23490 (profiler), from its thread 23499 (sampler)"
            ),
            "{m}"
        );
        t.tracer = Some(TracerInfo {
            tid: 900,
            pid: Some(900),
            name: "gdb".into(),
            thread_name: "gdb".into(),
        });
        let m = explain_with(7, Errno::EPERM, &user(), &t);
        assert!(m.contains("already traced by process 900 (gdb);"), "{m}");
    }

    #[test]
    fn other_user_without_yama() {
        let me = Privileges {
            ptrace_scope: None,
            ..user()
        };
        let m = explain_with(7, Errno::EPERM, &me, &target(0, 0));
        assert!(m.contains("another user"), "{m}");
        assert!(
            m.contains("runs as uid 0 (root) and the agent as uid 1000"),
            "{m}"
        );
        assert!(!m.contains("security module"), "{m}");
    }

    #[test]
    fn capabilities_the_agent_lacks() {
        // Root without CAP_SYS_PTRACE against a process holding it (pid 1 of a container).
        let me = Privileges {
            cap_prm: 1 << 2,
            cap_eff: 1 << 2,
            cap_bnd: !(1 << CAP_SYS_PTRACE),
            ..Default::default()
        };
        let mut t = target(0, (1 << CAP_SYS_PTRACE) | (1 << 2) | (1 << 21));
        t.status.as_mut().unwrap().nspid = vec![4567, 1];
        let m = explain_with(4567, Errno::EPERM, &me, &t);
        assert!(
            m.contains("process 4567 (svc; pid 1 of its own PID namespace: a container's init)"),
            "{m}"
        );
        assert!(
            m.contains("holds capabilities the agent does not (CAP_SYS_PTRACE, CAP_SYS_ADMIN)"),
            "{m}"
        );
        assert!(!m.contains("another user"), "{m}");
        assert!(
            m.contains("runs as root but without that capability"),
            "{m}"
        );
        // With CAP_SYS_PTRACE the capabilities are no cause; nothing else is: a module.
        let me = Privileges {
            cap_eff: 1 << CAP_SYS_PTRACE,
            cap_prm: 1 << CAP_SYS_PTRACE,
            ..me
        };
        let m = explain_with(4567, Errno::EPERM, &me, &t);
        assert!(!m.contains("holds capabilities"), "{m}");
        assert!(m.contains("security module"), "{m}");
        assert!(capability_names(u64::MAX >> 20, 2).ends_with("more"));
    }

    #[test]
    fn user_namespace_of_the_agent() {
        let me = Privileges {
            userns: Some("user:[4026532000]".into()),
            userns_nested: true,
            cap_eff: !0,
            cap_prm: !0,
            ..Default::default()
        };
        let mut t = target(65534, 0);
        let m = explain_with(7, Errno::EPERM, &me, &t);
        assert!(
            m.contains("inside a user namespace (user:[4026532000])"),
            "{m}"
        );
        assert!(!m.contains("another user"), "{m}");
        assert!(
            m.contains("fix: run the agent in the target's user namespace"),
            "{m}"
        );
        // The same namespace is no cause.
        t.userns = me.userns.clone();
        let m = explain_with(7, Errno::EPERM, &me, &t);
        assert!(!m.contains("user namespace ("), "{m}");
    }

    #[test]
    fn not_dumpable() {
        let me = Privileges {
            ptrace_scope: None,
            ..user()
        };
        let mut t = target(1000, 0);
        t.proc_owner = Some(0);
        let m = explain_with(7, Errno::EPERM, &me, &t);
        assert!(m.contains("not dumpable"), "{m}");
    }

    #[test]
    fn zombies_and_exits() {
        let mut t = target(1000, 0);
        t.state = Some('Z');
        t.live_threads = 0;
        t.parent = Some((42, "shell".into()));
        for e in [Errno::EPERM, Errno::ESRCH] {
            let m = explain_with(7, e, &user(), &t);
            assert!(
                m.contains("is a zombie") && m.contains("process 42 (shell)"),
                "{m}"
            );
        }
        t.live_threads = 2;
        assert!(t.main_thread_exited() && !t.is_zombie());
        assert!(
            explain_with(7, Errno::ESRCH, &user(), &target(1000, 0)).contains("no such process")
        );
    }
}
