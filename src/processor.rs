//! The processor thread: takes the sampler's messages in order, keeps the target's module
//! map current, unwinds each captured stack (after the thread already runs again), interns
//! it into the profile and names every unique frame once.

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::modules::{ModuleMap, ModuleSource};
use crate::os::{files, proc};
use crate::procmaps::{self, Mapping};
use crate::profile::{FrameKey, NO_MODULE, Profile, StackId};
use crate::sampler::Msg;
use crate::types::{FrameAddr, Pid, StackEnd, Tid};
use bytes::Bytes;
use profiler_symbolize::Symbolizer;
use profiler_unwind::Unwinder;

/// How often the processor looks for new messages when the channel is empty.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Files of a live target, read through its root.
pub struct LiveSource(pub Pid);

impl ModuleSource for LiveSource {
    fn file(&self, mapping: &Mapping) -> Option<Bytes> {
        files::open_mapping(self.0, mapping).map(|(b, _)| b)
    }
    fn memory(&self, mapping: &Mapping) -> Option<Bytes> {
        files::read_mapping(self.0, mapping)
    }
    fn root(&self) -> std::path::PathBuf {
        proc::root_dir(self.0)
    }
}

/// A frame with its name, innermost inlined frame first in a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedFrame {
    /// Function name, or `module+0xOFFSET`, or a marker such as `[truncated]`.
    pub function: String,
    /// Source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
    /// True when inlined into the next frame of the list.
    pub inlined: bool,
}

/// One sample kept for windowed outputs (Sentry chunks).
#[derive(Clone, Copy, Debug)]
pub struct TimedSample {
    /// Thread.
    pub tid: Tid,
    /// Nanoseconds since the session's epoch.
    pub time_ns: u64,
    /// Interned stack, None for an empty one.
    pub stack: Option<StackId>,
}

/// Counters from the processor.
#[derive(Clone, Debug, Default)]
pub struct ProcessorStats {
    /// Unwinds done.
    pub unwinds: u64,
    /// Maps re-read because an address was in no known module.
    pub maps_rereads: u64,
    /// Time spent unwinding.
    pub unwind_time: Duration,
    /// Frames produced.
    pub frames: u64,
}

/// Unwinds, aggregates and names.
pub struct Processor {
    pid: Pid,
    source: LiveSource,
    /// The module map.
    pub modules: ModuleMap,
    unwinder: Unwinder,
    /// The aggregated profile.
    pub profile: Profile,
    /// By thread id (assigned by the kernel, not chosen by the target).
    last_stack: FxHashMap<Tid, (Option<StackId>, StackEnd)>,
    frames: Vec<FrameAddr>,
    keys: Vec<FrameKey>,
    pool: Sender<Vec<u8>>,
    last_reread: Option<Instant>,
    /// Samples since the last `take_window`, when windows are kept.
    window: Option<Vec<TimedSample>>,
    /// Counters.
    pub stats: ProcessorStats,
    names: Vec<Option<Arc<[NamedFrame]>>>,
    exited: Vec<Tid>,
    /// Stack bytes in flight from the sampler (see `SamplerConfig::in_flight`).
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Processor {
    /// A processor for `pid`; stack buffers go back to the sampler through `pool`.
    pub fn new(pid: Pid, max_frames: usize, pool: Sender<Vec<u8>>, keep_window: bool) -> Self {
        Processor {
            pid,
            source: LiveSource(pid),
            modules: ModuleMap::new(),
            unwinder: Unwinder::new(max_frames),
            profile: Profile::new(),
            last_stack: FxHashMap::default(),
            frames: Vec::with_capacity(max_frames),
            keys: Vec::with_capacity(max_frames),
            pool,
            last_reread: None,
            window: keep_window.then(Vec::new),
            stats: ProcessorStats::default(),
            names: Vec::new(),
            exited: Vec::new(),
            in_flight: Default::default(),
        }
    }

    /// Handle every message until the sampler hangs up, calling `on_sample` after each
    /// sample (for windowed outputs).
    ///
    /// The channel is polled every few milliseconds rather than waited on: a receiver
    /// blocked in `recv` must be woken by the sampler's next send (a futex wake, often a
    /// cross-CPU interrupt, on every tick), while one that looks on its own timer costs the
    /// sampler nothing.
    pub fn run(&mut self, rx: &Receiver<Msg>, mut on_sample: impl FnMut(&mut Processor, u64)) {
        loop {
            match rx.try_recv() {
                Ok(msg) => {
                    if let Some(t) = self.handle(msg) {
                        on_sample(self, t);
                    }
                }
                Err(TryRecvError::Empty) => std::thread::sleep(POLL_INTERVAL),
                Err(TryRecvError::Disconnected) => break,
            }
        }
    }

    /// Handle one message; returns the sample time for samples.
    pub fn handle(&mut self, msg: Msg) -> Option<u64> {
        match msg {
            Msg::Maps(text) => {
                self.modules.update(&procmaps::parse(&text), &self.source);
                None
            }
            Msg::ThreadName { tid, name } => {
                self.profile.set_thread_name(tid, &name);
                None
            }
            Msg::ThreadExited(tid) => {
                self.last_stack.remove(&tid);
                if self.window.is_some() {
                    // Its name is still needed for the open window's chunk.
                    self.exited.push(tid);
                } else {
                    self.profile.retire_thread(tid);
                }
                None
            }
            Msg::Repeats { tids, time_ns } => {
                for tid in tids {
                    if let Some(&(stack, end)) = self.last_stack.get(&tid) {
                        self.record(tid, time_ns, stack, end);
                    }
                }
                Some(time_ns)
            }
            Msg::Repeat { tid, time_ns } => {
                let (stack, end) = *self.last_stack.get(&tid)?;
                self.record(tid, time_ns, stack, end);
                Some(time_ns)
            }
            Msg::Sample {
                tid,
                time_ns,
                regs,
                stack,
            } => {
                let t0 = Instant::now();
                let mut end = self
                    .unwinder
                    .unwind(&regs, &stack, &self.modules, &mut self.frames);
                if (self.modules.find_module(regs.ip()).is_none() || end == StackEnd::Unknown)
                    && self.reread_maps()
                {
                    end = self
                        .unwinder
                        .unwind(&regs, &stack, &self.modules, &mut self.frames);
                }
                self.stats.unwinds += 1;
                self.stats.frames += self.frames.len() as u64;
                self.stats.unwind_time += t0.elapsed();
                self.in_flight
                    .fetch_sub(stack.bytes.len(), std::sync::atomic::Ordering::Relaxed);
                let _ = self.pool.try_send(stack.bytes);
                self.keys.clear();
                for f in &self.frames {
                    let module = self
                        .modules
                        .find_module(f.lookup_addr())
                        .map_or(NO_MODULE, |m| m.id);
                    self.keys.push(FrameKey {
                        module,
                        addr: f.addr,
                        is_return: f.is_return,
                    });
                }
                let stack = self.profile.intern(&self.keys, end);
                self.last_stack.insert(tid, (stack, end));
                self.record(tid, time_ns, stack, end);
                Some(time_ns)
            }
        }
    }

    fn record(&mut self, tid: Tid, time_ns: u64, stack: Option<StackId>, end: StackEnd) {
        if let Some(s) = stack {
            self.profile.add_sample(tid, s, end);
        }
        if let Some(w) = &mut self.window {
            w.push(TimedSample {
                tid,
                time_ns,
                stack,
            });
        }
    }

    /// Re-read the maps after a miss, at most every 10 ms. True when they changed.
    fn reread_maps(&mut self) -> bool {
        if self
            .last_reread
            .is_some_and(|t| t.elapsed() < Duration::from_millis(10))
        {
            return false;
        }
        self.last_reread = Some(Instant::now());
        let Ok(text) = proc::read_maps(self.pid) else {
            return false;
        };
        self.stats.maps_rereads += 1;
        let g = self.modules.generation();
        self.modules.update(&procmaps::parse(&text), &self.source);
        self.modules.generation() != g
    }

    /// Retire the threads that exited before the window just taken.
    pub fn retire_exited(&mut self) {
        for tid in std::mem::take(&mut self.exited) {
            self.profile.retire_thread(tid);
        }
    }

    /// Forget interned frames and stacks (and their names), to bound memory in long runs
    /// that keep no local profile. Call right after `take_window`.
    pub fn reset_profile(&mut self) {
        self.profile.reset_interning();
        self.last_stack.clear();
        self.names.clear();
    }

    /// Samples kept whose time is before `cut_ns`; later ones stay for the next window.
    pub fn take_window_before(&mut self, cut_ns: u64) -> Vec<TimedSample> {
        let Some(w) = self.window.as_mut() else {
            return Vec::new();
        };
        let (before, after): (Vec<_>, Vec<_>) = w.drain(..).partition(|s| s.time_ns < cut_ns);
        *w = after;
        before
    }

    /// Samples kept since the last call (windowed outputs).
    pub fn take_window(&mut self) -> Vec<TimedSample> {
        self.window.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The names of frame `index` of the profile, innermost first (never empty); resolved
    /// once and cached.
    pub fn names(&mut self, index: u32, sym: &mut Symbolizer) -> Arc<[NamedFrame]> {
        let i = index as usize;
        if self.names.len() <= i {
            self.names
                .resize(self.profile.frames().len().max(i + 1), None);
        }
        if let Some(n) = &self.names[i] {
            return n.clone();
        }
        let key = self.profile.frames()[i];
        let named: Arc<[NamedFrame]> = name_frame(&key, &self.modules, sym).into();
        self.names[i] = Some(named.clone());
        named
    }
}

/// Name one frame, innermost inlined frame first; never empty.
pub fn name_frame(key: &FrameKey, modules: &ModuleMap, sym: &mut Symbolizer) -> Vec<NamedFrame> {
    let unnamed = |function: String| {
        vec![NamedFrame {
            function,
            file: None,
            line: None,
            inlined: false,
        }]
    };
    if let Some(m) = key.marker_name() {
        return unnamed(m.to_string());
    }
    let lookup = if key.is_return {
        key.addr.saturating_sub(1)
    } else {
        key.addr
    };
    let Some(module) = modules.module(key.module) else {
        return unnamed(format!("[unknown]+{:#x}", key.addr));
    };
    let svma = lookup.wrapping_sub(module.bias);
    if let Some(desc) = &module.desc {
        let frames = sym.symbolize(desc, svma);
        if !frames.is_empty() && frames.iter().any(|f| f.function.is_some()) {
            return frames
                .into_iter()
                .map(|f| NamedFrame {
                    function: f.function.unwrap_or_else(|| {
                        format!(
                            "{}+{:#x}",
                            module.short_name(),
                            key.addr.wrapping_sub(module.bias)
                        )
                    }),
                    file: f.file,
                    line: f.line,
                    inlined: f.inlined,
                })
                .collect();
        }
    }
    unnamed(format!(
        "{}+{:#x}",
        module.short_name(),
        key.addr.wrapping_sub(module.bias)
    ))
}
