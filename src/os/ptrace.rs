//! The tracer: seizes every thread of the target with `PTRACE_SEIZE`, follows new threads
//! (`PTRACE_O_TRACECLONE`), interrupts one thread at a time to read its registers, passes
//! every signal meant for the target on unchanged, respects group-stops (a user's SIGSTOP
//! keeps the target stopped until SIGCONT), and detaches every thread when dropped.
//!
//! All ptrace calls must come from the one thread that created the `Tracer`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace::{self, Options};
use nix::sys::signal::Signal;
use nix::unistd::Pid as NixPid;

use super::signals::{self, Wake};
use crate::types::{Pid, Regs, Tid};

/// How long a tick polls for the stops it asked for before sleeping until they come.
const STOP_SPIN: Duration = Duration::from_micros(50);

/// Something that happened to the target, for the sampler to pass on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A thread appeared (created after the attach).
    NewThread(Tid),
    /// A thread exited.
    ThreadExited(Tid),
    /// The process called `execve`: its modules are new.
    Exec,
    /// The whole process is gone.
    ProcessExited,
}

/// Why a thread could not be sampled this time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missed {
    /// The thread exited.
    Gone,
    /// The thread is in a group-stop (stopped by SIGSTOP and the like).
    GroupStopped,
    /// The thread did not stop in time (for example in an uninterruptible sleep).
    Timeout,
    /// The kernel refused (the error is given).
    Error(Errno),
}

#[derive(Clone, Copy, Debug, Default)]
struct ThreadState {
    /// In a group-stop, parked with PTRACE_LISTEN.
    group_stopped: bool,
    /// An interrupt was sent and its stop not yet seen (a sample that timed out).
    interrupt_pending: bool,
}

/// Failure to seize the process.
#[derive(Debug)]
pub struct AttachError {
    /// The kernel's error for the first thread that could not be seized.
    pub errno: Errno,
}

/// Ptrace state of one target process. Detaches from every thread when dropped.
pub struct Tracer {
    pid: Pid,
    threads: HashMap<Tid, ThreadState>,
    events: Vec<Event>,
    stop_request: Option<Signal>,
    process_exited: bool,
    pauses: Vec<Duration>,
    /// Threads listed in the process that the kernel refused to let us seize, by error.
    refused: HashMap<Tid, Errno>,
    /// The process's wait status, once its exit was reported here.
    exit_status: Option<i32>,
    /// How long to wait for an interrupted thread to stop.
    pub stop_timeout: Duration,
}

/// Resumes a thread stopped for its sample when dropped: the capture runs while the
/// thread is stopped, and even a capture that panics must not leave it stopped.
struct ResumeOnDrop {
    tid: Tid,
    sig: i32,
}

impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        let _ = resume(self.tid, self.sig);
    }
}

const OPTIONS: Options = Options::PTRACE_O_TRACECLONE.union(Options::PTRACE_O_TRACEEXEC);

fn npid(t: Tid) -> NixPid {
    NixPid::from_raw(t)
}

fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

/// A state change reported by `waitpid`, with raw signal numbers: nix's `Signal` cannot
/// represent real-time signals, and a report that cannot be decoded is still consumed, so
/// decoding must never fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Nothing to report.
    StillAlive,
    /// The thread exited or was killed, with its raw wait status.
    Exited(Tid, i32),
    /// Signal-delivery-stop: the signal about to be delivered.
    Stopped(Tid, i32),
    /// A ptrace event stop: (signal, event).
    Event(Tid, i32, i32),
    /// Anything else (a continue report).
    Other(Tid),
}

/// `waitpid(tid or -1, __WALL | WNOHANG)`.
fn wait_nohang(tid: Option<Tid>) -> Result<Status, Errno> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid out pointer for the duration of the call.
    let r = unsafe { libc::waitpid(tid.unwrap_or(-1), &mut status, libc::__WALL | libc::WNOHANG) };
    if r < 0 {
        return Err(Errno::last());
    }
    if r == 0 {
        return Ok(Status::StillAlive);
    }
    Ok(if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
        Status::Exited(r, status)
    } else if libc::WIFSTOPPED(status) {
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        if event != 0 {
            Status::Event(r, sig, event)
        } else {
            Status::Stopped(r, sig)
        }
    } else {
        Status::Other(r)
    })
}

/// True when thread `tid` of `pid` has exited (a zombie, not yet reaped).
fn thread_exited(pid: Pid, tid: Tid) -> bool {
    super::proc::thread_stat(pid, tid).is_some_and(|s| super::proc::is_exited_state(s.state))
}

/// Resume a stopped tracee, delivering `sig` (0 for none).
fn resume(tid: Tid, sig: i32) -> Result<(), Errno> {
    // SAFETY: PTRACE_CONT takes no address and a signal number as data.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_CONT,
            tid,
            0 as libc::c_long,
            sig as libc::c_long,
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Detach a stopped tracee, delivering `sig` (0 for none).
fn detach_with(tid: Tid, sig: i32) {
    // SAFETY: PTRACE_DETACH takes no address and a signal number as data.
    unsafe {
        libc::ptrace(
            libc::PTRACE_DETACH,
            tid,
            0 as libc::c_long,
            sig as libc::c_long,
        );
    }
}

impl Tracer {
    /// Seize every thread of `pid`. Threads that appear while this runs are caught either by
    /// `PTRACE_O_TRACECLONE` on their parent or by listing the tasks again, until a listing
    /// finds nothing new.
    pub fn attach(pid: Pid) -> Result<Tracer, AttachError> {
        let mut tracer = Tracer {
            pid,
            threads: HashMap::new(),
            events: Vec::new(),
            stop_request: None,
            process_exited: false,
            pauses: Vec::new(),
            refused: HashMap::new(),
            exit_status: None,
            stop_timeout: Duration::from_millis(20),
        };
        // The first refusal of a live thread, reported if no thread at all can be seized.
        let mut first_error = None;
        loop {
            let tids = super::proc::list_tasks(pid).map_err(|e| AttachError {
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::ESRCH)),
            })?;
            let mut new = 0;
            for tid in tids {
                if tracer.threads.contains_key(&tid) || tracer.refused.contains_key(&tid) {
                    continue;
                }
                match ptrace::seize(npid(tid), OPTIONS) {
                    Ok(()) => {
                        tracer.threads.insert(tid, ThreadState::default());
                        new += 1;
                    }
                    // A thread that exited between the listing and the seize.
                    Err(Errno::ESRCH) => {}
                    // An exited thread (the kernel answers EPERM for a zombie): a main
                    // thread that called pthread_exit stays one while the others run on.
                    Err(Errno::EPERM) if thread_exited(pid, tid) => {}
                    Err(errno) => {
                        // It may already be ours through the TRACECLONE of a seized parent
                        // (its first stop not yet seen); if it never shows up as ours,
                        // `refused` reports it.
                        if errno != Errno::EPERM {
                            return Err(AttachError { errno });
                        }
                        first_error.get_or_insert(errno);
                        tracer.refused.insert(tid, errno);
                    }
                }
            }
            if new == 0 {
                break;
            }
        }
        if tracer.threads.is_empty() {
            // Every live thread refused, or none is left.
            return Err(AttachError {
                errno: first_error.unwrap_or(Errno::ESRCH),
            });
        }
        Ok(tracer)
    }

    /// Threads of the process that could not be seized and never became ours (through the
    /// TRACECLONE of a traced parent), with the kernel's error.
    pub fn refused(&self) -> Vec<(Tid, Errno)> {
        let mut v: Vec<(Tid, Errno)> = self
            .refused
            .iter()
            .filter(|(tid, _)| !self.threads.contains_key(tid))
            .map(|(&t, &e)| (t, e))
            .collect();
        v.sort_unstable_by_key(|&(t, _)| t);
        v
    }

    /// The traced process.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The process's wait status (`waitpid`'s), once its exit was seen here. For a child of
    /// the agent this wait reaps it: the status is nowhere else.
    pub fn exit_status(&self) -> Option<i32> {
        self.exit_status
    }

    /// The threads currently traced.
    pub fn threads(&self) -> Vec<Tid> {
        let mut v: Vec<Tid> = self.threads.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// True when the thread is in a group-stop.
    pub fn is_group_stopped(&self, tid: Tid) -> bool {
        self.threads.get(&tid).is_some_and(|t| t.group_stopped)
    }

    /// True once the process has exited.
    pub fn process_exited(&self) -> bool {
        self.process_exited || self.threads.is_empty()
    }

    /// A stop request (SIGINT, SIGTERM, SIGHUP) that arrived while the tracer waited.
    pub fn take_stop_request(&mut self) -> Option<Signal> {
        self.stop_request.take()
    }

    /// Record a stop request seen by the caller's own wait.
    pub fn set_stop_request(&mut self, sig: Signal) {
        self.stop_request = Some(sig);
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Handle every pending state change of every thread without blocking. The stop of an
    /// interrupt sent earlier (one that did not arrive within its tick) is captured through
    /// `on_stop` and the thread resumed.
    pub fn drain(&mut self, mut on_stop: impl FnMut(Tid, Result<&Regs, Missed>)) {
        loop {
            match wait_nohang(None) {
                Ok(Status::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if let Some((tid, sig)) = self.handle(status) {
                        self.capture(tid, sig, &mut on_stop);
                    }
                }
            }
        }
    }

    /// True while an interrupt sent to `tid` has not been answered by its stop.
    pub fn interrupt_pending(&self, tid: Tid) -> bool {
        self.threads.get(&tid).is_some_and(|t| t.interrupt_pending)
    }

    /// Handle a state change. Returns the thread (and the signal to resume it with) when
    /// the stop answers an interrupt the tracer sent: that thread is left stopped for the
    /// caller to capture and resume. Any ptrace stop answers a pending interrupt (the
    /// kernel drops the pending interrupt trap when the thread traps for another reason,
    /// e.g. a signal about to be delivered or a clone), so such a stop is the sample.
    fn handle(&mut self, status: Status) -> Option<(Tid, i32)> {
        match status {
            Status::Exited(tid, status) => {
                if tid == self.pid {
                    self.exit_status = Some(status);
                }
                self.thread_gone(tid)
            }
            Status::Event(tid, sig, event) => {
                self.threads.entry(tid).or_default();
                return self.ptrace_event(tid, sig, event);
            }
            Status::Stopped(tid, sig) => {
                // A signal about to be delivered: pass it on unchanged.
                let state = self.threads.entry(tid).or_default();
                if std::mem::take(&mut state.interrupt_pending) {
                    return Some((tid, sig));
                }
                let _ = resume(tid, sig);
            }
            Status::Other(_) | Status::StillAlive => {}
        }
        None
    }

    /// Resume a thread stopped by an event, or hand it to the caller when an interrupt of
    /// ours is pending (see `handle`).
    fn resume_or_capture(&mut self, tid: Tid) -> Option<(Tid, i32)> {
        if self
            .threads
            .get_mut(&tid)
            .is_some_and(|s| std::mem::take(&mut s.interrupt_pending))
        {
            return Some((tid, 0));
        }
        let _ = resume(tid, 0);
        None
    }

    fn thread_gone(&mut self, tid: Tid) {
        if self.threads.remove(&tid).is_some() {
            self.events.push(Event::ThreadExited(tid));
        }
        if tid == self.pid || self.threads.is_empty() {
            // The leader's exit is reported after every other thread's (or at exec,
            // which is reported as an event first).
            self.process_exited = true;
            self.threads.clear();
            self.events.push(Event::ProcessExited);
        }
    }

    fn ptrace_event(&mut self, tid: Tid, sig: i32, event: i32) -> Option<(Tid, i32)> {
        match event {
            libc::PTRACE_EVENT_CLONE => {
                if let Ok(new) = ptrace::getevent(npid(tid)) {
                    let new = new as Tid;
                    self.refused.remove(&new);
                    if let std::collections::hash_map::Entry::Vacant(e) = self.threads.entry(new) {
                        e.insert(ThreadState::default());
                        self.events.push(Event::NewThread(new));
                    }
                }
                return self.resume_or_capture(tid);
            }
            libc::PTRACE_EVENT_EXEC => {
                // Every other thread is gone; the execing thread now has the leader's id.
                let gone: Vec<Tid> = self.threads.keys().copied().filter(|&t| t != tid).collect();
                for t in gone {
                    self.threads.remove(&t);
                    self.events.push(Event::ThreadExited(t));
                }
                self.threads.entry(tid).or_default();
                self.events.push(Event::Exec);
                return self.resume_or_capture(tid);
            }
            libc::PTRACE_EVENT_STOP => {
                self.refused.remove(&tid);
                let state = self.threads.entry(tid).or_default();
                if is_stop_signal(sig) {
                    // Group-stop: keep the thread stopped until SIGCONT. An interrupt sent
                    // meanwhile is answered by this stop.
                    state.interrupt_pending = false;
                    state.group_stopped = true;
                    listen(tid);
                } else if state.interrupt_pending {
                    state.interrupt_pending = false;
                    state.group_stopped = false;
                    return Some((tid, 0));
                } else {
                    // The first stop of a new thread, or the end of a group-stop: run on.
                    state.group_stopped = false;
                    let _ = resume(tid, 0);
                }
            }
            _ => return self.resume_or_capture(tid),
        }
        None
    }

    /// Read the registers of a thread stopped for its sample, hand them to `on_stop`, and
    /// resume it (delivering `sig`, the signal it stopped for, if any).
    fn capture(
        &mut self,
        tid: Tid,
        sig: i32,
        on_stop: &mut impl FnMut(Tid, Result<&Regs, Missed>),
    ) {
        let stopped_at = Instant::now();
        let guard = ResumeOnDrop { tid, sig };
        match ptrace::getregs(npid(tid)) {
            Ok(r) => on_stop(tid, Ok(&regs_from_user(&r))),
            Err(e) => on_stop(tid, Err(Missed::Error(e))),
        }
        drop(guard);
        self.pauses.push(stopped_at.elapsed());
    }

    /// Stop `tid`, read its registers, let `capture` copy what it needs (the stack) while
    /// the thread is stopped, and resume it at once.
    pub fn sample<T>(&mut self, tid: Tid, capture: impl FnOnce(&Regs) -> T) -> Result<T, Missed> {
        let mut capture = Some(capture);
        let mut out = Err(Missed::Timeout);
        let timeout = self.stop_timeout;
        self.sample_many(&[tid], timeout, |t, r| {
            if t == tid {
                out = match r {
                    Ok(regs) => match capture.take() {
                        Some(c) => Ok(c(regs)),
                        None => Err(Missed::Timeout),
                    },
                    Err(m) => Err(m),
                }
            }
        });
        out
    }

    /// Interrupt every thread of `tids` at once, then, as each one stops, read its
    /// registers, call `on_stop` (which copies the stack while the thread is stopped) and
    /// resume it. Waiting for the stops overlaps, so a tick costs the slowest stop rather
    /// than the sum of them; each thread is stopped only for its own capture. A thread that
    /// has not stopped after `wait` (it waits for a CPU, or sleeps uninterruptibly) keeps
    /// its interrupt pending: its stop is captured later, by `drain` or a later
    /// `sample_many`, through the `on_stop` given there. `on_stop` is also called with the
    /// reason when a thread cannot be sampled. The pause of each captured thread is in
    /// `pauses()` afterwards.
    pub fn sample_many(
        &mut self,
        tids: &[Tid],
        wait: Duration,
        mut on_stop: impl FnMut(Tid, Result<&Regs, Missed>),
    ) {
        self.pauses.clear();
        let mut pending: Vec<Tid> = Vec::with_capacity(tids.len());
        for &tid in tids {
            let Some(state) = self.threads.get_mut(&tid) else {
                on_stop(tid, Err(Missed::Gone));
                continue;
            };
            if state.group_stopped {
                on_stop(tid, Err(Missed::GroupStopped));
                continue;
            }
            if !state.interrupt_pending {
                match ptrace::interrupt(npid(tid)) {
                    Ok(()) => state.interrupt_pending = true,
                    Err(Errno::ESRCH) => {
                        on_stop(tid, Err(Missed::Gone));
                        continue;
                    }
                    Err(e) => {
                        on_stop(tid, Err(Missed::Error(e)));
                        continue;
                    }
                }
            }
            pending.push(tid);
        }
        let start = Instant::now();
        let deadline = start + wait;
        // A running thread stops within microseconds of its interrupt: poll for its stop
        // that long instead of sleeping, so the stopped thread does not also wait for the
        // sampler to be woken and scheduled.
        let spin_until = start + STOP_SPIN;
        while !pending.is_empty() {
            match wait_nohang(None) {
                Ok(Status::StillAlive) | Err(Errno::ECHILD) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    if now < spin_until {
                        std::hint::spin_loop();
                        continue;
                    }
                    if let Wake::Stop(sig) = signals::wait(deadline - now) {
                        self.stop_request = Some(sig);
                    }
                }
                Ok(status) => {
                    if let Some((tid, sig)) = self.handle(status) {
                        self.capture(tid, sig, &mut on_stop);
                    }
                    // Settle the threads of this tick that stopped, stopped for a
                    // group-stop, or went away.
                    let mut i = 0;
                    while i < pending.len() {
                        let tid = pending[i];
                        match self.threads.get(&tid) {
                            None => {
                                pending.swap_remove(i);
                                on_stop(tid, Err(Missed::Gone));
                            }
                            Some(s) if s.group_stopped => {
                                pending.swap_remove(i);
                                on_stop(tid, Err(Missed::GroupStopped));
                            }
                            Some(s) if !s.interrupt_pending => {
                                pending.swap_remove(i);
                            }
                            Some(_) => i += 1,
                        }
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
    }

    /// How long each thread captured by the last `sample_many` stayed stopped, from the
    /// report of its stop to its resume.
    pub fn pauses(&self) -> &[Duration] {
        &self.pauses
    }

    /// Detach from every thread, leaving the target running (or group-stopped, if it was).
    /// Signals that arrive meanwhile are delivered by the detach itself. Every thread is
    /// interrupted first and each is detached as its stop arrives, so the wait for a
    /// thousand threads to be scheduled overlaps; a thread that has not stopped within
    /// 500 ms (an uninterruptible sleep) is left to the kernel, which detaches it when
    /// the agent exits.
    pub fn detach_all(&mut self) {
        let mut pending: std::collections::HashSet<Tid> = std::collections::HashSet::new();
        for (&tid, state) in &self.threads {
            // A thread parked with PTRACE_LISTEN accepts only PTRACE_INTERRUPT: interrupt
            // it too; it then reports a stop and can be detached, staying in its group-stop.
            if state.interrupt_pending || ptrace::interrupt(npid(tid)).is_ok() {
                pending.insert(tid);
            }
        }
        self.threads.clear();
        let deadline = Instant::now() + Duration::from_millis(500);
        while !pending.is_empty() {
            match wait_nohang(None) {
                Ok(Status::StillAlive) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    let nap = (deadline - now).min(Duration::from_millis(5));
                    if let Wake::Stop(sig) = signals::wait(nap) {
                        self.stop_request = Some(sig);
                    }
                }
                Ok(Status::Stopped(tid, sig)) => {
                    // A signal on its way: deliver it with the detach.
                    detach_with(tid, sig);
                    pending.remove(&tid);
                }
                Ok(Status::Event(tid, _, libc::PTRACE_EVENT_CLONE)) => {
                    // The new thread was attached automatically: its first stop comes
                    // here too, and it is detached then.
                    if let Ok(new) = ptrace::getevent(npid(tid)) {
                        pending.insert(new as Tid);
                    }
                    detach_with(tid, 0);
                    pending.remove(&tid);
                }
                Ok(Status::Event(tid, ..)) => {
                    detach_with(tid, 0);
                    pending.remove(&tid);
                }
                Ok(Status::Exited(tid, status)) => {
                    if tid == self.pid {
                        self.exit_status = Some(status);
                    }
                    pending.remove(&tid);
                }
                Ok(Status::Other(_)) | Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        // Reap anything left for threads that exited meanwhile.
        while let Ok(s) = wait_nohang(None) {
            match s {
                Status::StillAlive => break,
                Status::Exited(tid, status) if tid == self.pid => self.exit_status = Some(status),
                _ => {}
            }
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn listen(tid: Tid) {
    // SAFETY: PTRACE_LISTEN takes no address or data; the tid is a tracee in a group-stop.
    unsafe {
        libc::ptrace(
            libc::PTRACE_LISTEN,
            tid,
            0 as libc::c_long,
            0 as libc::c_long,
        );
    }
}

/// The registers of `user_regs_struct` in DWARF order.
pub fn regs_from_user(r: &libc::user_regs_struct) -> Regs {
    Regs([
        r.rax, r.rdx, r.rcx, r.rbx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip,
    ])
}
