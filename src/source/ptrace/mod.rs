//! The ptrace stack source. It runs on its own thread, which is the tracer (ptrace is per
//! thread). Each tick it stops each thread that may have run since its last sample, reads
//! its registers, copies its used stack with `process_vm_readv` and resumes it at once;
//! unwinding happens on the unwinder's thread. Threads that did not run are not stopped:
//! their previous stack is reused. Signals for the target are passed on as they arrive.
//!
//! While a thread is stopped only the part of its stack that can have changed since its
//! previous capture is copied ([`StackCache`]); the unchanged outer part is added from that
//! capture after the thread runs again, so a deep stack stops it no longer than a shallow
//! one.

pub mod timer;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::linkmap::{self, LinkMapWatch};
use super::python::PyReader;
use super::stack_cache::{Completion, StackCache};
use super::{Captured, Outbox, RawSample, SourceEvent, SourceStats, StackSource, StopReason};
use crate::os::proc::{self, ThreadWatch};
use crate::os::ptrace::{AttachError, Event, Missed, Tracer};
use crate::os::signals::{self, Wake};
use crate::os::vm;
use crate::procmaps::{self, Mapping};
use crate::types::{Pid, Regs, Tid};
use nix::sys::signal::Signal;
use profiler_unwind::StackSnapshot;
use timer::Schedule;

/// Sampler settings.
#[derive(Clone, Debug)]
pub struct SamplerConfig {
    /// Target process.
    pub pid: Pid,
    /// Ticks per second.
    pub frequency: f64,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Most stack bytes copied per sample.
    pub max_stack_bytes: usize,
    /// Try to run the sampler thread at a real-time priority.
    pub realtime: bool,
    /// The target is a program the agent started (`profiler record`), stopped (SIGSTOP)
    /// before its `execve`: it is continued once seized, so sampling starts at its first
    /// instruction. Stop signals are then the program's business: SIGINT (a terminal's Ctrl-C,
    /// which reaches the program too, as it is in the same process group) is ignored,
    /// SIGTERM and SIGHUP are passed on to it, and sampling goes on until it exits.
    pub launched: bool,
}

struct ThreadSlot {
    captured: bool,
    /// Tick time of the interrupt sent and not yet answered.
    requested_at: Option<u64>,
    /// Whether the thread was running or ready to run when that interrupt was sent.
    requested_on_cpu: bool,
    /// Later tick times while that interrupt is outstanding, each with whether the thread
    /// was ready to run then (waiting for a CPU) rather than blocked.
    waiting: Vec<(u64, bool)>,
    /// Where the thread waits and how it runs, read without stopping it.
    watch: Option<ThreadWatch>,
    /// The scheduler counts read when the thread was last seen waiting where its last
    /// sample found it: while they stay the same it has not run since.
    still: Option<(u64, u64)>,
    /// Stack pointer and pc of the last capture.
    last_sp_pc: Option<(u64, u64)>,
    name: Option<String>,
    /// Tick time (ns since the epoch) of the last name check; None before the first.
    name_checked: Option<u64>,
    stack_range: Option<(u64, u64)>,
    /// The last complete stack, to copy only what changed.
    cache: StackCache,
}

/// Runs the sampling loop on the calling thread.
pub struct Sampler {
    cfg: SamplerConfig,
    tracer: Tracer,
    out: Outbox,
    threads: HashMap<Tid, ThreadSlot>,
    maps: Vec<Mapping>,
    maps_text: String,
    maps_read_at: Instant,
    maps_interval: Duration,
    /// A stack pointer fell outside the known mappings (a new thread's stack): re-read
    /// the maps soon.
    maps_stale: bool,
    epoch: Instant,
    stats: SourceStats,
    tick_wait: Duration,
    /// The dynamic linker's list of loaded objects, looked at after every round of
    /// captures: a library swapped at one address is seen before the samples that ran it.
    linkmap: Option<LinkMapWatch>,
    /// No list to watch (a static program, or one that is not a list).
    linkmap_off: bool,
    /// Python frames, read in the same stop as the native stack.
    py: PyReader,
    /// The maps changed: look for a Python interpreter after the tick.
    py_pending: bool,
}

impl Sampler {
    /// Seize the target. Must be called on the thread that will run `run`.
    pub fn attach(cfg: SamplerConfig, out: Outbox, epoch: Instant) -> Result<Sampler, AttachError> {
        let tracer = Tracer::attach(cfg.pid)?;
        let cfg_pid = cfg.pid;
        let mut s = Sampler {
            cfg,
            tracer,
            out,
            threads: HashMap::new(),
            maps: Vec::new(),
            maps_text: String::new(),
            maps_read_at: Instant::now(),
            maps_interval: MAPS_MIN_INTERVAL,
            maps_stale: false,
            epoch,
            stats: SourceStats {
                source: "ptrace",
                ..SourceStats::default()
            },
            tick_wait: Duration::from_millis(20),
            linkmap: None,
            linkmap_off: false,
            py: PyReader::new(cfg_pid),
            py_pending: false,
        };
        s.refresh_maps();
        for tid in s.tracer.threads() {
            s.add_thread(tid);
        }
        if s.cfg.launched {
            // Seized while stopped before its exec: let it run into the exec (reported as
            // an event, which re-reads the maps), and so to its first instruction.
            signals::send(s.cfg.pid, Signal::SIGCONT);
        }
        Ok(s)
    }

    /// Threads traced now.
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    fn add_thread(&mut self, tid: Tid) {
        self.stats.threads_seen += 1;
        self.threads.insert(
            tid,
            ThreadSlot {
                captured: false,
                requested_at: None,
                requested_on_cpu: true,
                waiting: Vec::new(),
                watch: None,
                still: None,
                last_sp_pc: None,
                name: None,
                name_checked: None,
                stack_range: None,
                cache: StackCache::new(),
            },
        );
    }

    /// Re-read the maps; send them on when they changed. Returns false when the process is
    /// gone.
    fn refresh_maps(&mut self) -> bool {
        let t0 = Instant::now();
        let Ok(text) = proc::read_maps(self.cfg.pid) else {
            return false;
        };
        let cost = t0.elapsed();
        self.maps_read_at = Instant::now();
        self.maps_stale = false;
        // Keep re-reading cheap relative to the work: at most 0.5% of a CPU (a target with
        // many threads has long maps: each thread stack is a mapping).
        self.maps_interval = (cost * 200).max(MAPS_MIN_INTERVAL);
        if text != self.maps_text {
            self.maps = procmaps::parse(&text);
            self.maps_text = text.clone();
            self.out.control(SourceEvent::Maps(text));
            for t in self.threads.values_mut() {
                t.stack_range = None;
            }
            self.watch_linkmap();
            // Looked for after the next tick: reading the interpreter's symbol tables must not
            // delay the samples (the first one above all).
            self.py_pending = true;
        }
        true
    }

    /// Start watching the dynamic linker's list of objects once it can be found (its
    /// address is filled in by the dynamic linker as the program starts, which maps
    /// libraries: so it is looked for whenever the maps changed, until found).
    fn watch_linkmap(&mut self) {
        if self.linkmap.is_some() || self.linkmap_off {
            return;
        }
        let mem = vm::LiveProcess(self.cfg.pid);
        let Ok(auxv) = proc::read_auxv(self.cfg.pid) else {
            return;
        };
        if let Some(at) = linkmap::find_r_debug(&auxv, &mem) {
            let w = LinkMapWatch::new(at, &mem);
            if w.broken() {
                self.linkmap_off = true;
            } else {
                self.linkmap = Some(w);
            }
        }
    }

    /// After a round of captures: when the list of loaded objects changed, re-read the
    /// maps now, so the samples just taken are unwound and named with the objects they ran.
    fn check_linkmap(&mut self) {
        let Some(w) = self.linkmap.as_mut() else {
            return;
        };
        self.stats.linkmap_checks += 1;
        if !w.changed(&vm::LiveProcess(self.cfg.pid)) {
            return;
        }
        self.stats.linkmap_changes += 1;
        if w.broken() {
            self.linkmap = None;
            self.linkmap_off = true;
        }
        self.refresh_maps();
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn handle_events(&mut self) {
        for ev in self.tracer.take_events() {
            match ev {
                Event::NewThread(tid) => {
                    if !self.threads.contains_key(&tid) {
                        self.add_thread(tid);
                    }
                }
                Event::ThreadExited(tid) => self.forget(tid),
                Event::Exec => {
                    self.linkmap = None;
                    self.linkmap_off = false;
                    self.refresh_maps();
                    for t in self.threads.values_mut() {
                        t.watch = None;
                        t.still = None;
                        t.last_sp_pc = None;
                        t.name = None;
                        t.cache.clear();
                    }
                }
                Event::ProcessExited => {}
            }
        }
        // Threads the tracer knows of that we did not hear about (first stops seen early).
        for tid in self.tracer.threads() {
            if !self.threads.contains_key(&tid) {
                self.add_thread(tid);
            }
        }
    }

    /// A thread is gone: tell the processor, count it if it was never sampled.
    fn forget(&mut self, tid: Tid) {
        if let Some(slot) = self.threads.remove(&tid) {
            if !slot.captured {
                self.stats.threads_unsampled += 1;
            }
            self.out.control(SourceEvent::ThreadExited(tid));
        }
    }

    /// Sleep until `deadline` (relative to the epoch), passing signals and events on.
    fn sleep_until(&mut self, deadline_ns: u64) -> Option<StopReason> {
        loop {
            let now = self.now_ns();
            if now >= deadline_ns {
                return None;
            }
            match signals::wait(Duration::from_nanos(deadline_ns - now)) {
                Wake::Timeout => {}
                Wake::Child => {
                    self.drain();
                    self.handle_events();
                    if self.tracer.process_exited() {
                        return Some(StopReason::TargetExited);
                    }
                }
                Wake::Stop(sig) => {
                    if let Some(r) = self.stop_signal(sig) {
                        return Some(r);
                    }
                }
            }
        }
    }

    /// A stop signal for the agent: the end of sampling; or, for a program the agent
    /// started, passed on to it (SIGTERM, SIGHUP) or left to it (SIGINT, which a terminal
    /// sends to the program as well).
    fn stop_signal(&mut self, sig: Signal) -> Option<StopReason> {
        if !self.cfg.launched {
            return Some(StopReason::Signal(sig));
        }
        if matches!(sig, Signal::SIGTERM | Signal::SIGHUP) {
            signals::send(self.cfg.pid, sig);
        }
        None
    }

    /// Run until the duration ends, a stop signal arrives or the target exits. Detaches
    /// from the target before returning.
    pub fn run(mut self) -> SourceStats {
        signals::precise_timers();
        self.stats.realtime = self.cfg.realtime && signals::raise_priority();
        let start = self.now_ns();
        let mut schedule = Schedule::new(start, self.cfg.frequency, 0.25, fastrand::u64(..));
        // How long a tick waits for its threads to stop before moving on; later stops are
        // captured as they come.
        self.tick_wait = Duration::from_nanos(schedule.period_ns() / 2)
            .clamp(Duration::from_micros(200), Duration::from_millis(20));
        let end_ns = self.cfg.duration.map(|d| start + d.as_nanos() as u64);
        let mut first_tick = None;
        let mut last_tick = start;
        let stop = loop {
            let deadline = schedule.next(self.now_ns());
            if let Some(end) = end_ns
                && deadline >= end
            {
                if let Some(r) = self.sleep_until(end) {
                    break r;
                }
                break StopReason::Duration;
            }
            if let Some(r) = self.sleep_until(deadline) {
                break r;
            }
            if let Some(r) = self
                .tracer
                .take_stop_request()
                .and_then(|sig| self.stop_signal(sig))
            {
                break r;
            }
            self.drain();
            self.handle_events();
            if self.tracer.process_exited() {
                break StopReason::TargetExited;
            }
            let since = self.maps_read_at.elapsed();
            if (since >= self.maps_interval || (self.maps_stale && since >= MAPS_STALE_INTERVAL))
                && !self.refresh_maps()
            {
                break StopReason::TargetExited;
            }
            let tick_ns = self.now_ns();
            first_tick.get_or_insert(tick_ns);
            last_tick = tick_ns;
            self.stats.ticks += 1;
            if !self.tick() {
                break StopReason::Aborted;
            }
            if self.py_pending {
                self.py_pending = false;
                let (target, note) = self.py.on_maps(&self.maps);
                if let Some(t) = target {
                    self.out.control(SourceEvent::Python(t));
                }
                self.stats.notes.extend(note);
            }
            // The round's events go to the unwind stage together.
            self.out.flush();
            if let Some(r) = self
                .tracer
                .take_stop_request()
                .and_then(|sig| self.stop_signal(sig))
            {
                break r;
            }
        };
        self.stats.ticks_skipped = schedule.skipped();
        self.stats.elapsed = (last_tick.saturating_sub(first_tick.unwrap_or(last_tick))) as f64
            / 1e9
            + schedule.period_ns() as f64 / 1e9;
        self.stats.stop = Some(stop);
        self.tracer.detach_all();
        self.stats.exit_status = self.tracer.exit_status();
        self.stats.threads_refused = self
            .tracer
            .refused()
            .into_iter()
            .map(|(tid, e)| (tid, e.desc().to_string()))
            .collect();
        self.out.flush();
        self.stats
    }

    /// Handle pending state changes of the target, capturing late interrupt stops.
    fn drain(&mut self) {
        self.with_capture(|tracer, cap| tracer.drain(|tid, r| cap.on_stop(tid, r)));
    }

    /// Run `f` with the tracer and a capture context borrowed apart, then settle what the
    /// captures found (threads gone, the processor gone).
    fn with_capture(&mut self, f: impl FnOnce(&mut Tracer, &mut Capture<'_>)) {
        let Sampler {
            tracer,
            threads,
            maps,
            out,
            stats,
            cfg,
            epoch,
            py,
            ..
        } = self;
        let mut cap = Capture {
            py,
            threads,
            maps,
            out,
            stats,
            max_stack: cfg.max_stack_bytes,
            epoch: *epoch,
            gone: Vec::new(),
            maps_miss: false,
            ready: Vec::new(),
        };
        f(tracer, &mut cap);
        let Capture {
            gone,
            maps_miss,
            ready,
            ..
        } = cap;
        self.maps_stale |= maps_miss;
        // A library swapped since the last look is in the maps before these samples.
        if !ready.is_empty() {
            self.check_linkmap();
        }
        // Every thread captured runs again: complete the stacks from their previous
        // captures and send them.
        send_ready(ready, &mut self.threads, &mut self.out, &mut self.stats);
        for tid in gone {
            self.forget(tid);
        }
    }

    /// Sample every thread once. False when the stages after the source are gone.
    fn tick(&mut self) -> bool {
        let pid = self.cfg.pid;
        let now_ns = self.now_ns();
        let mut tids: Vec<Tid> = self.threads.keys().copied().collect();
        tids.sort_unstable();
        let mut to_sample = Vec::with_capacity(tids.len());
        let mut repeats = Vec::new();
        for tid in tids {
            if self.tracer.is_group_stopped(tid) {
                continue;
            }
            let pending = self.tracer.interrupt_pending(tid);
            let Some(slot) = self.threads.get_mut(&tid) else {
                continue;
            };
            // Name: on first sight and every second (threads name themselves after start).
            if slot
                .name_checked
                .is_none_or(|t| now_ns.saturating_sub(t) >= 1_000_000_000)
            {
                slot.name_checked = Some(now_ns);
                if let Some(n) = proc::thread_name(pid, tid)
                    && slot.name.as_deref() != Some(n.as_str())
                {
                    slot.name = Some(n.clone());
                    self.out.control(SourceEvent::ThreadName { tid, name: n });
                }
            }
            if pending {
                // Still waiting for its stop from an earlier tick (it waits for a CPU, or
                // sleeps uninterruptibly): it has not run since, so that stop stands for
                // this tick too.
                if slot.waiting.len() < MAX_WAITING {
                    let on_cpu = slot.watch.as_mut().is_none_or(|w| w.blocked_at().is_none());
                    slot.waiting.push((now_ns, on_cpu));
                } else {
                    self.stats.missed += 1;
                }
                continue;
            }
            if slot.watch.is_none() {
                slot.watch = ThreadWatch::open(pid, tid);
            }
            // A thread still blocked where its last sample found it has the same stack. The
            // cheap check first: not switched in since it was last seen waiting there (the
            // counts are read before the slower look at where it waits, so a thread that
            // ran in between has other counts next time).
            let (sched, blocked) = match slot.watch.as_mut() {
                Some(w) => {
                    let sched = w.sched();
                    let blocked = if sched.is_some() && sched == slot.still {
                        slot.last_sp_pc
                    } else {
                        w.blocked_at()
                    };
                    (sched, blocked)
                }
                None => (None, None),
            };
            let unchanged = match (blocked, slot.last_sp_pc) {
                (Some((sp, pc)), Some((lsp, lpc))) => sp == lsp && (pc == lpc || pc == lpc + 2),
                _ => false,
            };
            slot.still = if unchanged { sched } else { None };
            if !unchanged {
                slot.requested_at = Some(now_ns);
                // Running or runnable now, unless the kernel says it waits somewhere (a
                // thread whose files cannot be read counts as running).
                slot.requested_on_cpu = blocked.is_none();
                to_sample.push(tid);
            } else {
                self.stats.repeated += 1;
                repeats.push(tid);
            }
        }
        if !repeats.is_empty() {
            self.out.repeat(repeats, now_ns, false, &mut self.stats);
        }
        if self.py.active() && !to_sample.is_empty() {
            let all: Vec<Tid> = self.threads.keys().copied().collect();
            self.py.refresh_threads(&all, false);
        }
        let wait = self.tick_wait;
        self.with_capture(|tracer, cap| {
            tracer.sample_many(&to_sample, wait, |tid, r| cap.on_stop(tid, r))
        });
        for i in 0..self.tracer.pauses().len() {
            let p = self.tracer.pauses()[i];
            self.stats.record_pause(p);
        }
        if !self.threads.is_empty()
            && self
                .threads
                .keys()
                .all(|&t| self.tracer.is_group_stopped(t))
        {
            self.stats.ticks_target_stopped += 1;
        }
        !self.out.closed()
    }
}

impl StackSource for Sampler {
    fn thread_count(&self) -> usize {
        Sampler::thread_count(self)
    }

    fn run(self: Box<Self>) -> SourceStats {
        Sampler::run(*self)
    }
}

/// The sampler re-reads the maps at least this often (libraries loaded or swapped).
const MAPS_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// ...and after a stack outside the known mappings, at most this often.
const MAPS_STALE_INTERVAL: Duration = Duration::from_millis(10);

/// Most tick times remembered for a thread whose stop is late.
const MAX_WAITING: usize = 100_000;

/// What a captured stop needs: the sampler's state, borrowed apart from the tracer.
struct Capture<'a> {
    py: &'a mut PyReader,
    threads: &'a mut HashMap<Tid, ThreadSlot>,
    maps: &'a [Mapping],
    out: &'a mut Outbox,
    stats: &'a mut SourceStats,
    max_stack: usize,
    epoch: Instant,
    gone: Vec<Tid>,
    /// A stack pointer was found in no known mapping.
    maps_miss: bool,
    /// Captures waiting for the thread to run again before their stack is completed:
    /// (sample, bytes to add from the previous capture, tick times it also stands for).
    ready: Vec<ReadyCapture>,
}

/// A capture whose stack is completed after the thread runs again: the sample, whether
/// its stack is to be spliced with the thread's cache ([`StackCache::splice`]), and the
/// later tick times (with whether the thread was on a CPU then) it also stands for.
type ReadyCapture = (RawSample, bool, Vec<(u64, bool)>);

/// Complete the stacks captured (their threads run again) and send them.
fn send_ready(
    ready: Vec<ReadyCapture>,
    threads: &mut HashMap<Tid, ThreadSlot>,
    out: &mut Outbox,
    stats: &mut SourceStats,
) {
    for (mut sample, splice, waiting) in ready {
        let tid = sample.tid;
        if splice
            && let Captured::Stack { stack, tail, .. } = &mut sample.captured
            && let Some(slot) = threads.get_mut(&tid)
        {
            *tail = slot.cache.splice(stack.start, &mut stack.bytes);
        }
        if !out.sample(sample, waiting.len() as u64, stats) {
            continue;
        }
        // Ticks that passed while the stop was on its way: the thread did not run
        // in between, so they share this stack.
        stats.deferred += waiting.len() as u64;
        for (t, on_cpu) in waiting {
            out.repeat(vec![tid], t, on_cpu, stats);
        }
    }
}

impl Capture<'_> {
    /// A thread stopped for its sample (runs while it is stopped: copy the stack), or could
    /// not be sampled.
    fn on_stop(&mut self, tid: Tid, result: Result<&Regs, Missed>) {
        let mut slot = self.threads.get_mut(&tid);
        match result {
            Ok(regs) => {
                let sp = regs.sp();
                let range = slot
                    .as_ref()
                    .and_then(|s| s.stack_range)
                    .filter(|&(lo, hi)| sp >= lo && sp < hi)
                    .or_else(|| procmaps::find_stack(self.maps, sp));
                self.maps_miss |= range.is_none();
                let top = range.map_or(sp.saturating_add(64 * 1024), |(_, hi)| hi);
                let top = top.min(sp.saturating_add(self.max_stack as u64));
                let mut buf = self.out.buffer();
                buf.clear();
                let mut scratch = StackCache::new();
                let cache = match slot.as_mut() {
                    Some(s) => &mut s.cache,
                    None => &mut scratch,
                };
                let (read, reused, mut splice) =
                    match cache.complete(sp, top, &mut buf, false, |a, b| vm::read(tid, a, b)) {
                        Completion::Complete { read, reused } => (read, reused, true),
                        Completion::Short | Completion::SeamMoved => (buf.len(), 0, false),
                    };
                let mut tail = None;
                if slot.is_none() && splice {
                    // No slot to keep a cache in: the capture is whole, read fresh (a
                    // large one taken over as a shared buffer), and nothing is kept.
                    tail = scratch.into_tail();
                    splice = false;
                }
                self.stats.captured += 1;
                self.stats.stack_bytes += read as u64;
                self.stats.stack_bytes_reused += reused as u64;
                let now = self.epoch.elapsed().as_nanos() as u64;
                let (time_ns, on_cpu, waiting) = match slot {
                    Some(slot) => {
                        slot.stack_range = range;
                        slot.captured = true;
                        slot.last_sp_pc = Some((sp, regs.ip()));
                        (
                            slot.requested_at.take().unwrap_or(now),
                            slot.requested_on_cpu,
                            std::mem::take(&mut slot.waiting),
                        )
                    }
                    None => (now, true, Vec::new()),
                };
                // Still in the stop: the Python frames of the same moment (addresses and
                // offsets only; code objects are resolved by the unwind stage).
                let python = self.py.read(tid);
                let sample = RawSample {
                    tid,
                    time_ns,
                    on_cpu,
                    python,
                    captured: Captured::Stack {
                        regs: *regs,
                        stack: StackSnapshot {
                            start: sp,
                            bytes: buf,
                        },
                        tail,
                    },
                };
                self.ready.push((sample, splice, waiting));
            }
            Err(m) => {
                if let Some(slot) = slot {
                    slot.requested_at = None;
                    slot.waiting.clear();
                }
                match m {
                    Missed::Gone => self.gone.push(tid),
                    Missed::GroupStopped => {}
                    Missed::Timeout | Missed::Error(_) => self.stats.missed += 1,
                }
            }
        }
    }
}
