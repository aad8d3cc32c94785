//! The agent's own signal handling: SIGINT, SIGTERM and SIGCHLD are blocked in every agent
//! thread and taken synchronously by the sampler with `sigtimedwait`, so a tracee's stop
//! (SIGCHLD) or a request to stop wakes the sampler at once.

use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::unistd::Pid as NixPid;

/// The signals the sampler waits for.
pub fn agent_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGHUP);
    set
}

/// Block the agent's signals in the calling thread; threads spawned afterwards inherit the
/// mask. Call from `main` before any thread starts.
pub fn block_agent_signals() -> nix::Result<()> {
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&agent_signals()), None)
}

/// What woke a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The timeout passed.
    Timeout,
    /// A tracee changed state (SIGCHLD).
    Child,
    /// The user asked the agent to stop (SIGINT, SIGTERM, SIGHUP).
    Stop(Signal),
}

/// Wait up to `timeout` for one of the agent's signals.
pub fn wait(timeout: Duration) -> Wake {
    let set = agent_signals();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is a valid initialised sigset, `ts` a valid timespec, and a null siginfo
    // pointer is allowed.
    let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    match r {
        libc::SIGCHLD => Wake::Child,
        s if s > 0 => Signal::try_from(s).map_or(Wake::Timeout, Wake::Stop),
        _ => Wake::Timeout,
    }
}

/// Ask the kernel for precise timer wake-ups in the calling thread (timer slack 1 ns), so
/// the sampling schedule is kept to the microsecond.
pub fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Give the calling thread a real-time priority (SCHED_FIFO, the lowest level) when the
/// agent may (CAP_SYS_NICE or an RLIMIT_RTPRIO allowance), so its ticks stay on time on a
/// busy machine: a sampler that has to wait for a CPU tends to catch its target at syscall
/// boundaries. The sampler sleeps between ticks and the kernel's RT throttling keeps a
/// share of every CPU for normal tasks. Returns false when not permitted.
pub fn raise_priority() -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: `param` is a valid sched_param; pid 0 means the calling thread.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) == 0
    }
}

/// Keeps the calling thread from preempting the task running on a CPU when it wakes
/// (SCHED_BATCH: the same nice level and the same share of the CPU, but a thread woken
/// where the target runs waits for the target's time slice to end, or for another CPU
/// to go idle and take it, instead of interrupting the target at once), until dropped:
/// the thread's policy is then given back, so threads it starts later (the next
/// session's sampler, when the agent attaches again) do not inherit SCHED_BATCH. For the
/// pipeline's stages, which wake once per round of the source; never for the ptrace
/// sampler, whose ticks must be on time.
pub struct NoWakeupPreemption {
    /// The policy and parameters to give back; None when nothing was changed.
    before: Option<(libc::c_int, libc::sched_param)>,
    /// Bound to the thread whose policy it changed.
    _thread: std::marker::PhantomData<*const ()>,
}

impl NoWakeupPreemption {
    /// Switch the calling thread to SCHED_BATCH (nothing changes when the kernel
    /// refuses).
    pub fn begin() -> Self {
        let mut param = libc::sched_param { sched_priority: 0 };
        let batch = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` and `batch` are valid
        // sched_params that outlive the calls.
        let before = unsafe {
            let policy = libc::sched_getscheduler(0);
            (policy >= 0
                && libc::sched_getparam(0, &mut param) == 0
                && libc::sched_setscheduler(0, libc::SCHED_BATCH, &batch) == 0)
                .then_some((policy, param))
        };
        NoWakeupPreemption {
            before,
            _thread: std::marker::PhantomData,
        }
    }
}

impl Drop for NoWakeupPreemption {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.before {
            // SAFETY: as in `begin`, on the same thread (the guard is not Send).
            unsafe {
                libc::sched_setscheduler(0, policy, &param);
            }
        }
    }
}

/// Send `sig` to process `pid` (a program the agent started, passing a stop request on);
/// a process already gone is no error worth reporting.
pub fn send(pid: i32, sig: Signal) {
    let _ = nix::sys::signal::kill(NixPid::from_raw(pid), sig);
}
