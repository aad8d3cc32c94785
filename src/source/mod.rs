//! Stack sources: where samples come from. A source watches one process and emits
//! [`SourceEvent`]s in order: the process's memory map, thread names and exits, and
//! samples of threads as captured registers plus stack bytes (or, for a source that walks
//! stacks itself, frames). The ptrace sampler ([`ptrace`]) is one source; every later
//! stage sees only these events, so another source plugs in without touching them.
//!
//! A source must never block on the stages after it: [`Outbox`] drops samples (counted)
//! when they fall behind and holds the few control events until there is room.

pub mod linkmap;
pub mod perf;
pub mod ptrace;
pub mod python;
pub mod stack_cache;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};
use nix::sys::signal::Signal;

use crate::types::{FrameAddr, Regs, StackEnd, Tid};
use profiler_unwind::StackSnapshot;

/// What a thread's sample carries.
#[derive(Debug)]
pub enum Captured {
    /// Registers and the used part of the stack, to be unwound.
    Stack {
        /// Registers at the moment of the sample.
        regs: Regs,
        /// The copied stack: the sample's own bytes...
        stack: StackSnapshot,
        /// ...and, for a deep stack, the outer part right above them, shared with the
        /// thread's other samples instead of copied ([`stack_cache`]).
        tail: Option<stack_cache::SharedTail>,
    },
    /// A stack the source walked itself, leaf first.
    Frames {
        /// Frames, leaf first.
        frames: Vec<FrameAddr>,
        /// How the walk ended.
        end: StackEnd,
    },
}

/// One sample of one thread.
#[derive(Debug)]
pub struct RawSample {
    /// Thread.
    pub tid: Tid,
    /// Nanoseconds since the session's start (monotonic).
    pub time_ns: u64,
    /// True when the thread was running or ready to run at the sample (on-CPU); false
    /// when it was waiting (asleep, blocked in a system call).
    pub on_cpu: bool,
    /// What was captured.
    pub captured: Captured,
    /// The thread's Python frames (code objects and instruction offsets, leaf first), read
    /// at the same moment as the native stack, when the target is CPython and the thread
    /// has a Python thread state.
    pub python: Option<crate::python::PyRawStack>,
}

impl RawSample {
    /// Stack bytes this sample holds (what counts against the in-flight bound).
    pub fn stack_bytes(&self) -> usize {
        match &self.captured {
            Captured::Stack { stack, tail, .. } => {
                stack.bytes.len() + tail.as_ref().map_or(0, |t| t.counted_bytes())
            }
            Captured::Frames { .. } => 0,
        }
    }
}

/// What a source emits, in order.
// Nearly every event is a sample: boxing it to shrink the rare others would cost an
// allocation per sample.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SourceEvent {
    /// The process's mappings changed (or are first known): the text of its maps.
    Maps(String),
    /// A sample.
    Sample(RawSample),
    /// Threads known not to have run since their last samples: each one's last stack
    /// again, at this time.
    Repeat {
        /// Threads.
        tids: Vec<Tid>,
        /// Nanoseconds since the session's start.
        time_ns: u64,
        /// True when the threads were ready to run (waiting for a CPU), false when they
        /// were waiting for something else (asleep where their last samples found them).
        on_cpu: bool,
    },
    /// A thread's name (when first seen and when it changes).
    ThreadName {
        /// Thread.
        tid: Tid,
        /// Its `comm`.
        name: String,
    },
    /// A thread exited.
    ThreadExited(Tid),
    /// The target runs a CPython interpreter the agent reads (sent once, before the first
    /// sample with Python frames).
    Python(Arc<crate::python::PythonTarget>),
}

/// Why a source stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `--duration` elapsed.
    Duration,
    /// SIGINT, SIGTERM or SIGHUP.
    Signal(Signal),
    /// The target exited.
    TargetExited,
    /// The stages after the source went away.
    Aborted,
}

/// Counters from a source.
#[derive(Clone, Debug, Default)]
pub struct SourceStats {
    /// Looks at the dynamic linker's list of loaded objects.
    pub linkmap_checks: u64,
    /// Looks that found it changed (each followed by a read of the maps before the
    /// samples of that round were sent).
    pub linkmap_changes: u64,
    /// Which source ran (`ptrace` or `perf`).
    pub source: &'static str,
    /// Ticks run.
    pub ticks: u64,
    /// Ticks skipped because the source fell behind.
    pub ticks_skipped: u64,
    /// Threads stopped and captured.
    pub captured: u64,
    /// Samples of threads that had not run (stack reused).
    pub repeated: u64,
    /// Samples missed: thread gone, did not stop in time, or the kernel refused.
    pub missed: u64,
    /// Samples dropped because the later stages fell behind.
    pub dropped: u64,
    /// Samples of threads whose stop came after their tick (waiting for a CPU): they
    /// reuse the stack captured at that stop.
    pub deferred: u64,
    /// Pause of the target thread per capture, in microseconds (histogram, 1 µs buckets).
    pub pause_us: Vec<u32>,
    /// Bytes of stack copied.
    pub stack_bytes: u64,
    /// Bytes of stack taken from a thread's previous capture instead of copied again.
    pub stack_bytes_reused: u64,
    /// perf: samples whose stack went on past the kernel's copy and could not be completed
    /// (the thread had returned past the end of the copy before it was read).
    pub seam_moved: u64,
    /// perf: samples of threads off CPU taken from their context-switch samples.
    pub switch_samples: u64,
    /// perf: stacks of blocked threads read where `/proc` says they wait.
    pub proc_captures: u64,
    /// Lines for the summary about how the source ran (which one, and why not the other).
    pub notes: Vec<String>,
    /// Seconds from the first to the last tick.
    pub elapsed: f64,
    /// Threads seen in all.
    pub threads_seen: u64,
    /// Threads that exited before their first sample.
    pub threads_unsampled: u64,
    /// Threads the kernel refused to let the agent trace, with the reason.
    pub threads_refused: Vec<(Tid, String)>,
    /// Ticks at which every thread of the target was stopped (SIGSTOP and the like):
    /// nothing to sample.
    pub ticks_target_stopped: u64,
    /// Why it stopped.
    pub stop: Option<StopReason>,
    /// True when the source ran at a real-time priority.
    pub realtime: bool,
    /// The target's wait status (as `waitpid` gives it), when the source saw it exit.
    pub exit_status: Option<i32>,
}

impl SourceStats {
    /// A percentile (0..=100) of the pause histogram, in microseconds.
    pub fn pause_percentile(&self, p: f64) -> Option<u32> {
        let total: u64 = self.pause_us.iter().map(|&c| c as u64).sum();
        if total == 0 {
            return None;
        }
        let want = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (us, &c) in self.pause_us.iter().enumerate() {
            seen += c as u64;
            if seen >= want {
                return Some(us as u32);
            }
        }
        Some(self.pause_us.len() as u32)
    }

    /// Count one pause.
    pub fn record_pause(&mut self, d: std::time::Duration) {
        let us = (d.as_micros() as usize).min(9_999);
        if self.pause_us.len() <= us {
            self.pause_us.resize(us + 1, 0);
        }
        self.pause_us[us] += 1;
    }
}

/// A stack source: seized or opened on the thread that runs it, then run there until it
/// stops.
pub trait StackSource {
    /// Threads of the target known at start.
    fn thread_count(&self) -> usize;
    /// Sample until the duration ends, a stop signal arrives or the target exits; leave
    /// the target as it was found.
    fn run(self: Box<Self>) -> SourceStats;
}

/// Most stack bytes in flight between a source and the unwinder; beyond, samples are
/// dropped (and counted) rather than queued.
pub const MAX_IN_FLIGHT: usize = 8 << 20;

/// Most bytes of stack buffers kept for reuse (deep stacks make megabyte buffers: keeping
/// every one ever made would hold the high-water mark of a burst for the whole session).
pub const POOL_BYTES: usize = 4 << 20;

/// Stack buffers handed back by the unwinder (or by the source, for dropped samples) for
/// the next copies, at most [`POOL_BYTES`] of them; a buffer past that is freed.
#[derive(Clone)]
pub struct BufferPool {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    bytes: Arc<AtomicUsize>,
}

impl Default for BufferPool {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(256);
        BufferPool {
            tx,
            rx,
            bytes: Arc::default(),
        }
    }
}

impl BufferPool {
    /// Keep `buf` for reuse, or free it when the pool holds enough.
    pub fn give(&self, buf: Vec<u8>) {
        let cap = buf.capacity();
        if self.bytes.load(Ordering::Relaxed) + cap > POOL_BYTES {
            return;
        }
        if self.tx.try_send(buf).is_ok() {
            self.bytes.fetch_add(cap, Ordering::Relaxed);
        }
    }

    /// A buffer kept for reuse, if any.
    pub fn take(&self) -> Option<Vec<u8>> {
        let buf = self.rx.try_recv().ok()?;
        self.bytes.fetch_sub(buf.capacity(), Ordering::Relaxed);
        Some(buf)
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Most events waiting to be sent (held batches and the one being gathered) before the
/// oldest thread name among them is given up: while batches are held only control events
/// are added.
const MAX_HELD: usize = 65_536;

/// A batch is sent once it holds this many events, even before the source's round ends.
const MAX_BATCH: usize = 1024;

/// Batches of events from a source to the unwind stage.
pub type EventSender = flume::Sender<Vec<SourceEvent>>;
/// ...and where the unwind stage takes them.
pub type EventReceiver = flume::Receiver<Vec<SourceEvent>>;

/// The sending end of a source: never blocks. Events gather in a batch that the source
/// sends at the end of each round ([`Outbox::flush`]), so the stage after it wakes once per
/// round rather than once per event. A sample that comes while an earlier batch waits for
/// room in the channel, or that would pass the bound on bytes in flight, is dropped and
/// counted, and its buffer kept for reuse; control events wait in order until there is
/// room. Only dropping the outbox, when the source ends, waits for the channel.
pub struct Outbox {
    tx: EventSender,
    /// Stack buffers handed back by the unwinder, and by this outbox for dropped samples.
    pool: BufferPool,
    /// Stack bytes sent and not yet unwound (the unwinder subtracts what it handled).
    in_flight: Arc<AtomicUsize>,
    /// The batch being gathered, and the stack bytes of its samples.
    batch: Vec<SourceEvent>,
    batch_bytes: usize,
    /// Batches that found the channel full, oldest first; while any waits, samples are
    /// dropped (so only control events gather).
    held: VecDeque<Vec<SourceEvent>>,
    closed: bool,
}

impl Outbox {
    /// An outbox sending on `tx`; buffers come back through `pool`.
    pub fn new(tx: EventSender, pool: BufferPool, in_flight: Arc<AtomicUsize>) -> Self {
        Outbox {
            tx,
            pool,
            in_flight,
            batch: Vec::new(),
            batch_bytes: 0,
            held: VecDeque::new(),
            closed: false,
        }
    }

    /// A buffer for a stack copy.
    pub fn buffer(&mut self) -> Vec<u8> {
        self.pool.take().unwrap_or_default()
    }

    /// True when the receiving side went away.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Stack bytes in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Send what was gathered (the batches held before it first), as far as there is
    /// room; the rest waits for the next call.
    pub fn flush(&mut self) {
        self.seal();
        self.send_held();
    }

    /// Close the batch being gathered: it joins the held ones.
    fn seal(&mut self) {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.held.push_back(batch);
        }
        self.batch_bytes = 0;
    }

    /// Send the held batches, oldest first, while there is room.
    fn send_held(&mut self) {
        while let Some(batch) = self.held.pop_front() {
            match self.tx.try_send(batch) {
                Ok(()) => {}
                Err(flume::TrySendError::Full(batch)) => {
                    self.held.push_front(batch);
                    return;
                }
                Err(flume::TrySendError::Disconnected(_)) => {
                    self.closed = true;
                    self.held.clear();
                    return;
                }
            }
        }
    }

    /// True when a sample now would have to be dropped: batches that found the channel
    /// full still wait after another try. (Asked of the batches held, not of the
    /// channel: looking at the channel takes its lock, once per sample.)
    fn backed_up(&mut self) -> bool {
        if !self.held.is_empty() {
            self.send_held();
        }
        !self.held.is_empty()
    }

    fn push(&mut self, ev: SourceEvent) {
        self.batch.push(ev);
        if self.batch.len() >= MAX_BATCH || self.batch_bytes > MAX_IN_FLIGHT / 4 {
            // A large round goes out in parts, so that the unwinder works on its start
            // while the source gathers the rest (the bound on bytes in flight counts
            // what waits here too).
            self.flush();
        }
    }

    /// Gather a sample, or drop it (counted in `stats.dropped`, its buffer kept) when a
    /// batch waits for room or the in-flight bytes would pass their bound. `extra` samples
    /// that stand on this one (repeats of it) are counted with it when it is dropped.
    pub fn sample(&mut self, mut s: RawSample, extra: u64, stats: &mut SourceStats) -> bool {
        let backed_up = self.backed_up();
        if self.closed {
            stats.dropped += 1 + extra;
            self.recycle(s);
            return false;
        }
        if let Captured::Stack { tail: Some(t), .. } = &mut s.captured {
            // The first sample sent with a shared buffer counts its bytes.
            t.claim();
        }
        let n = s.stack_bytes();
        if backed_up || self.in_flight() + n > MAX_IN_FLIGHT {
            stats.dropped += 1 + extra;
            self.recycle(s);
            return false;
        }
        self.in_flight.fetch_add(n, Ordering::Relaxed);
        self.batch_bytes += n;
        self.push(SourceEvent::Sample(s));
        true
    }

    /// Gather repeats of the threads' last stacks, or drop them (counted).
    pub fn repeat(&mut self, tids: Vec<Tid>, time_ns: u64, on_cpu: bool, stats: &mut SourceStats) {
        let backed_up = self.backed_up();
        if self.closed {
            return;
        }
        if backed_up {
            stats.dropped += tids.len() as u64;
            return;
        }
        self.push(SourceEvent::Repeat {
            tids,
            time_ns,
            on_cpu,
        });
    }

    /// Gather a control event (maps, a name, an exit): the stages after the source need
    /// every one of them, in order, so it waits for room when the channel is full. Past
    /// 65,536 waiting events the oldest name is given up (a later one replaces it).
    pub fn control(&mut self, ev: SourceEvent) {
        if self.closed {
            return;
        }
        self.push(ev);
        let waiting: usize = self.held.iter().map(Vec::len).sum::<usize>() + self.batch.len();
        if waiting > MAX_HELD {
            for b in self.held.iter_mut().chain(std::iter::once(&mut self.batch)) {
                if let Some(i) = b
                    .iter()
                    .position(|e| matches!(e, SourceEvent::ThreadName { .. }))
                {
                    b.remove(i);
                    break;
                }
            }
        }
    }

    fn recycle(&mut self, s: RawSample) {
        if let Captured::Stack { stack, tail, .. } = s.captured {
            if let Some(mut t) = tail {
                t.unclaim();
            }
            self.pool.give(stack.bytes);
        }
    }
}

impl Drop for Outbox {
    /// When the source ends, what it gathered goes out, waiting for room if need be (the
    /// target is no longer sampled, and the unwind stage drains the channel until it
    /// closes).
    fn drop(&mut self) {
        self.seal();
        for batch in self.held.drain(..) {
            if self.tx.send(batch).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flume::bounded;

    fn sample(tid: Tid, len: usize) -> RawSample {
        RawSample {
            tid,
            time_ns: 0,
            on_cpu: true,
            python: None,
            captured: Captured::Stack {
                regs: Regs::default(),
                stack: StackSnapshot {
                    start: 0x1000,
                    bytes: vec![0; len],
                },
                tail: None,
            },
        }
    }

    fn kind(ev: &SourceEvent) -> &'static str {
        match ev {
            SourceEvent::Maps(_) => "maps",
            SourceEvent::Sample(_) => "sample",
            SourceEvent::ThreadName { .. } => "name",
            SourceEvent::ThreadExited(_) => "exit",
            SourceEvent::Repeat { .. } => "repeat",
            SourceEvent::Python(_) => "python",
        }
    }

    /// An outbox on a channel of `cap` batches, its receiver and fresh counters. Bound as
    /// `let (out, rx, stats)`, the receiver goes before the outbox when a test ends or
    /// fails: the outbox's drop would otherwise wait for room in a full channel forever.
    fn outbox_on(
        cap: usize,
        pool: BufferPool,
        in_flight: Arc<AtomicUsize>,
    ) -> (Outbox, EventReceiver, SourceStats) {
        let (tx, rx) = bounded(cap);
        let out = Outbox::new(tx, pool, in_flight);
        (out, rx, SourceStats::default())
    }

    fn outbox(cap: usize) -> (Outbox, EventReceiver, SourceStats) {
        outbox_on(cap, BufferPool::default(), Arc::default())
    }

    #[test]
    fn a_round_goes_out_as_one_batch_and_what_is_left_goes_out_at_the_end() {
        let (mut out, rx, mut stats) = outbox(4);
        out.control(SourceEvent::Maps("a".into()));
        assert!(out.sample(sample(1, 16), 0, &mut stats));
        out.repeat(vec![2], 5, false, &mut stats);
        assert!(rx.is_empty(), "nothing is sent before the round ends");
        out.flush();
        let batch = rx.try_recv().expect("one batch");
        assert_eq!(
            batch.iter().map(kind).collect::<Vec<_>>(),
            ["maps", "sample", "repeat"]
        );
        assert!(rx.is_empty());
        // An empty round sends nothing.
        out.flush();
        assert!(rx.is_empty());
        // A source that ends without a last flush still delivers what it gathered.
        out.control(SourceEvent::ThreadExited(1));
        drop(out);
        let batch = rx.try_recv().expect("sent when the outbox went away");
        assert_eq!(batch.iter().map(kind).collect::<Vec<_>>(), ["exit"]);
        assert_eq!(stats.dropped, 0);
    }

    #[test]
    fn dropped_samples_leave_nothing_in_flight_and_keep_their_buffers() {
        let pool = BufferPool::default();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (mut out, rx, mut stats) = outbox_on(1, pool.clone(), in_flight.clone());
        assert!(out.sample(sample(1, 1 << 20), 0, &mut stats));
        out.flush();
        // The channel is full: the next round's batch waits for room...
        assert!(out.sample(sample(1, 16), 0, &mut stats));
        out.flush();
        // ...and from here on every later sample is dropped, and none of them may count
        // against the bound, or the source would refuse samples for good.
        for _ in 0..40 {
            assert!(!out.sample(sample(1, 1 << 20), 2, &mut stats));
        }
        assert_eq!(stats.dropped, 40 * 3);
        assert_eq!(in_flight.load(Ordering::Relaxed), (1 << 20) + 16);
        // Their buffers are kept for reuse, but not all 40 MiB of them.
        assert!(
            pool.bytes() >= 1 << 20 && pool.bytes() <= POOL_BYTES,
            "{}",
            pool.bytes()
        );
        assert_eq!(
            out.buffer().len(),
            1 << 20,
            "a dropped sample's buffer is reused"
        );
        // The unwinder takes the first one: room again.
        let Ok(mut batch) = rx.try_recv() else {
            panic!("the first sample was sent")
        };
        let Some(SourceEvent::Sample(s)) = batch.pop() else {
            panic!("a sample")
        };
        in_flight.fetch_sub(s.stack_bytes(), Ordering::Relaxed);
        // The held batch goes out with the next sample, which is taken.
        assert!(out.sample(sample(1, 1 << 20), 0, &mut stats));
        assert_eq!(rx.try_recv().map(|b| b.len()).ok(), Some(1));
        assert_eq!(stats.dropped, 40 * 3);
    }

    #[test]
    fn a_shared_stack_buffer_is_counted_by_the_first_sample_sent_with_it() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (mut out, rx, mut stats) = outbox_on(1, BufferPool::default(), in_flight.clone());
        let tail = stack_cache::SharedTail::from_bytes(0x2000, vec![0; 1 << 20]);
        let with_tail = || {
            let mut s = sample(1, 4096);
            if let Captured::Stack { tail: t, .. } = &mut s.captured {
                *t = Some(tail.clone());
            }
            s
        };
        let sent = || {
            let Ok(mut batch) = rx.try_recv() else {
                panic!("sent")
            };
            let Some(SourceEvent::Sample(s)) = batch.pop() else {
                panic!("a sample")
            };
            s
        };
        assert!(out.sample(sample(2, 16), 0, &mut stats));
        out.flush();
        out.control(SourceEvent::ThreadExited(3));
        out.flush();
        // A batch waits for room: the sample that brought the buffer is dropped...
        assert!(!out.sample(with_tail(), 0, &mut stats));
        assert_eq!(in_flight.load(Ordering::Relaxed), 16);
        let _ = sent();
        in_flight.fetch_sub(16, Ordering::Relaxed);
        out.flush();
        assert!(matches!(
            rx.try_recv().as_deref(),
            Ok([SourceEvent::ThreadExited(3)])
        ));
        // ...so the next one sent with it counts it, and only that one.
        assert!(out.sample(with_tail(), 0, &mut stats));
        out.flush();
        assert_eq!(in_flight.load(Ordering::Relaxed), 4096 + (1 << 20));
        let first = sent();
        assert!(out.sample(with_tail(), 0, &mut stats));
        out.flush();
        let second = sent();
        assert_eq!(first.stack_bytes(), 4096 + (1 << 20));
        assert_eq!(second.stack_bytes(), 4096, "shared for free");
    }

    #[test]
    fn control_events_wait_in_order_and_never_block() {
        let (mut out, rx, mut stats) = outbox(1);
        out.control(SourceEvent::Maps("a".into()));
        assert!(out.sample(sample(1, 16), 0, &mut stats));
        out.flush();
        // Full: these are held, not lost, and the calls return at once.
        out.control(SourceEvent::ThreadName {
            tid: 1,
            name: "x".into(),
        });
        out.control(SourceEvent::ThreadExited(1));
        out.flush();
        // A sample behind held control events is dropped (it would overtake them), and
        // so is a repeat.
        assert!(!out.sample(sample(1, 16), 0, &mut stats));
        out.repeat(vec![1, 2], 5, false, &mut stats);
        assert_eq!(stats.dropped, 3);
        // A later round's batch waits behind the held one.
        out.control(SourceEvent::Maps("b".into()));
        out.flush();
        let mut seen = Vec::new();
        for _ in 0..4 {
            while let Ok(batch) = rx.try_recv() {
                seen.extend(batch.iter().map(kind));
            }
            out.flush();
        }
        assert_eq!(seen, ["maps", "sample", "name", "exit", "maps"]);
        drop(rx);
        out.control(SourceEvent::ThreadExited(2));
        out.flush();
        assert!(out.closed());
        assert!(!out.sample(sample(1, 16), 0, &mut stats));
    }
}
