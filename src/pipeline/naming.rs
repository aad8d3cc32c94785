//! The naming stage: owns the symbolizer and the one name cache (a name per interned
//! frame, in the [`Store`]), and hands every sample to the sinks. Each unique frame is
//! named once. When no sink reads names as samples arrive (the file outputs), frames in
//! the target's modules are named when the session ends, as `perf script` names what
//! `perf record` took: reading debug information (tens of milliseconds of inflating and
//! parsing for a library such as glibc) then takes no CPU from the target while it runs.
//! The module's files are opened when its first frame is seen, while the target's files
//! can still be reached. Other frames (Python code, JIT code from the perf map) are named
//! at once, from facts that may not last.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::profile::{Naming, StackId, Store};
use super::{FrameKey, NO_MODULE, Unwound, UnwoundReceiver};
use crate::modules::Module;
use crate::perfmap::PerfMap;
use crate::python::{PyCodeInfo, names};
use crate::sink::{SampleRef, Sink, SinkReport};
use crate::types::{StackEnd, Tid};
use profiler_symbolize::{Symbolizer, SymbolizerStats};

/// What a named frame stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Machine code of the target (named or not).
    Native,
    /// A Python function (CPython): `function` is its qualified name, `file` its
    /// `co_filename`, `line` the line being executed, `module` its dotted module name.
    Python,
    /// Not a frame but the reason a stack ended before its root (`[truncated]`,
    /// `[unknown]`, `[max depth]`), standing at the root side of the stack.
    Marker(StackEnd),
}

/// One frame with its name: the vocabulary every sink uses. An address inside inlined
/// code yields several, innermost first, all with the same address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamedFrame {
    /// What it is.
    pub kind: FrameKind,
    /// Absolute address in the target: the pc for a leaf or a signal-interrupted frame,
    /// the return address for a caller (0 for a marker).
    pub addr: u64,
    /// Path of the module the address is in, as the target sees it.
    pub module: Option<Arc<str>>,
    /// Function name (demangled), when something names it.
    pub function: Option<Arc<str>>,
    /// Source file.
    pub file: Option<Arc<str>>,
    /// Source line.
    pub line: Option<u32>,
    /// True when inlined into the next frame of its list.
    pub inlined: bool,
    /// What to show: the function, else `module+0xOFFSET` or `[unknown]+0xADDR`, or the
    /// marker's name.
    pub label: Arc<str>,
}

impl NamedFrame {
    /// The marker frame of a stack that ended early.
    pub fn marker(end: StackEnd) -> NamedFrame {
        let label = match end {
            StackEnd::Root => "[root]",
            StackEnd::Truncated => "[truncated]",
            StackEnd::Unknown => "[unknown]",
            StackEnd::MaxDepth => "[max depth]",
        };
        NamedFrame {
            kind: FrameKind::Marker(end),
            addr: 0,
            module: None,
            function: None,
            file: None,
            line: None,
            inlined: false,
            label: label.into(),
        }
    }

    /// What a frame interned with [`Naming::Later`](super::profile::Naming::Later) shows
    /// until it is named (never read when the stage names frames before they are read).
    pub fn not_named_yet(addr: u64) -> NamedFrame {
        NamedFrame::unnamed(addr, None, format!("[not named yet]+{addr:#x}"))
    }

    fn unnamed(addr: u64, module: Option<Arc<str>>, label: String) -> NamedFrame {
        NamedFrame {
            kind: FrameKind::Native,
            addr,
            module,
            function: None,
            file: None,
            line: None,
            inlined: false,
            label: label.into(),
        }
    }
}

/// A Python code object with its dotted module name and file name, shared by its frames.
type PyCode = (Arc<PyCodeInfo>, Arc<str>, Arc<str>);

/// Names frames through a [`Symbolizer`], knowing the session's modules, and JIT code in
/// no module through the target's perf map.
pub struct Namer {
    symbolizer: Symbolizer,
    /// Module paths as shared strings, by module id.
    paths: Vec<Option<Arc<str>>>,
    /// The target's `/tmp/perf-PID.map`, when it has one.
    perf_map: Option<PerfMap>,
    /// Python code objects by id, with their dotted module names.
    py: Vec<Option<PyCode>>,
}

impl Namer {
    /// A namer over `symbolizer`. C++ names its demangler cannot read go to GNU's
    /// (`os::demangle`), as `c++filt` reads them.
    pub fn new(symbolizer: Symbolizer) -> Self {
        crate::os::demangle::install();
        Namer {
            symbolizer,
            paths: Vec::new(),
            perf_map: None,
            py: Vec::new(),
        }
    }

    /// Name code in no module (JIT code) from the target's perf map.
    pub fn set_perf_map(&mut self, perf_map: PerfMap) {
        self.perf_map = Some(perf_map);
    }

    /// The symbolizer's counters.
    pub fn stats(&self) -> SymbolizerStats {
        self.symbolizer.stats()
    }

    /// DWARF units indexed and parsed so far.
    pub fn lazy_units(&self) -> (usize, usize) {
        self.symbolizer.lazy_units()
    }

    /// A Python code object, to name the frames of code `id`.
    pub fn add_py_code(&mut self, id: u32, info: Arc<PyCodeInfo>) {
        let i = id as usize;
        if self.py.len() <= i {
            self.py.resize(i + 1, None);
        }
        let module: Arc<str> = names::module_name(&info.filename).into();
        let file: Arc<str> = info.filename.as_str().into();
        self.py[i] = Some((info, module, file));
    }

    fn name_python(&self, id: u32, line: Option<u32>) -> NamedFrame {
        match self.py.get(id as usize).and_then(|p| p.as_ref()) {
            Some((info, module, file)) => NamedFrame {
                kind: FrameKind::Python,
                addr: 0,
                module: Some(module.clone()),
                function: Some(info.function.as_str().into()),
                file: Some(file.clone()),
                line,
                inlined: false,
                label: names::label(&info.function, &info.filename, info.first_line).into(),
            },
            None => NamedFrame {
                kind: FrameKind::Python,
                addr: 0,
                module: None,
                function: None,
                file: None,
                line,
                inlined: false,
                label: "[python]".into(),
            },
        }
    }

    /// Whether `key` can be named at the end of the session rather than now: a frame in
    /// one of the target's modules. That module's files are opened now (its symbol tables
    /// read, its debug file found), so naming later does not need the target.
    pub fn can_name_later(&mut self, key: &FrameKey, modules: &[Arc<Module>]) -> bool {
        if key.as_python().is_some() || key.module == NO_MODULE {
            return false;
        }
        match modules
            .get(key.module as usize)
            .and_then(|m| m.desc.as_ref())
        {
            Some(desc) => {
                self.symbolizer.debug_info(desc);
                true
            }
            None => false,
        }
    }

    /// Name one frame, innermost inlined frame first; never empty.
    pub fn name(&mut self, key: &FrameKey, modules: &[Arc<Module>]) -> Vec<NamedFrame> {
        if let Some((id, line)) = key.as_python() {
            return vec![self.name_python(id, line)];
        }
        let Some(module) = (key.module != NO_MODULE)
            .then(|| modules.get(key.module as usize))
            .flatten()
        else {
            if let Some(jit) = self
                .perf_map
                .as_mut()
                .and_then(|m| m.lookup(key.lookup_addr()))
            {
                let name: Arc<str> = Arc::from(jit.name.as_str());
                let mut frame = NamedFrame::unnamed(key.addr, None, String::new());
                frame.label = name.clone();
                frame.function = Some(name);
                return vec![frame];
            }
            return vec![NamedFrame::unnamed(
                key.addr,
                None,
                format!("[unknown]+{:#x}", key.addr),
            )];
        };
        let i = module.id as usize;
        if self.paths.len() <= i {
            self.paths.resize(i + 1, None);
        }
        let path = self.paths[i]
            .get_or_insert_with(|| Arc::from(module.path.as_str()))
            .clone();
        let offset_label = || {
            format!(
                "{}+{:#x}",
                module.short_name(),
                key.addr.wrapping_sub(module.bias)
            )
        };
        if let Some(desc) = &module.desc {
            let svma = key.lookup_addr().wrapping_sub(module.bias);
            let frames = self.symbolizer.symbolize(desc, svma);
            if frames.iter().any(|f| f.function.is_some()) {
                return frames
                    .into_iter()
                    .map(|f| {
                        let function: Option<Arc<str>> = f.function.map(Arc::from);
                        NamedFrame {
                            kind: FrameKind::Native,
                            addr: key.addr,
                            module: Some(path.clone()),
                            label: function.clone().unwrap_or_else(|| offset_label().into()),
                            function,
                            file: f.file.map(Arc::from),
                            line: f.line,
                            inlined: f.inlined,
                        }
                    })
                    .collect();
            }
        }
        vec![NamedFrame::unnamed(key.addr, Some(path), offset_label())]
    }
}

/// How often at most sinks get their `tick` while events flow.
const TICK_INTERVAL: Duration = Duration::from_millis(5);
/// How long the stage waits for an event before it ticks anyway. Waiting rather than
/// polling: on a machine the target keeps busy, every wake-up of the agent's threads takes
/// a CPU from the target; the stage wakes when the unwinder has something for it.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// The naming stage with the store and the sinks.
pub struct NamingStage {
    namer: Namer,
    store: Store,
    sinks: Vec<Box<dyn Sink>>,
    /// Each thread's last stack, for repeats.
    last: FxHashMap<Tid, (Option<StackId>, StackEnd)>,
    /// Start the interning afresh past this many unique frames, when no sink keeps
    /// stack ids (runs of days with Sentry only).
    max_frames: Option<usize>,
    /// When the first unwound sample arrived (before it was named).
    first_sample: Option<std::time::Instant>,
    /// Name frames in modules when the session ends (no sink reads names per sample).
    name_at_end: bool,
}

impl NamingStage {
    /// A stage naming through `namer` for `sinks`. With `max_frames`, memory stays bounded
    /// in long runs where no sink keeps stack ids.
    pub fn new(namer: Namer, sinks: Vec<Box<dyn Sink>>, max_frames: Option<usize>) -> Self {
        let keeps = sinks.iter().any(|s| s.keeps_stacks());
        // (With no sink at all only the summary's top functions are read, and the
        // interning may be reset during the run: name as frames come.)
        let name_at_end = !sinks.is_empty() && !sinks.iter().any(|s| s.reads_names_per_sample());
        NamingStage {
            namer,
            store: Store::new(),
            sinks,
            last: FxHashMap::default(),
            max_frames: max_frames.filter(|_| !keeps),
            first_sample: None,
            name_at_end,
        }
    }

    /// When the first unwound sample reached this stage, before naming it.
    pub fn first_sample(&self) -> Option<std::time::Instant> {
        self.first_sample
    }

    /// Name JIT code from the target's perf map too.
    pub fn with_perf_map(mut self, perf_map: PerfMap) -> Self {
        self.namer.set_perf_map(perf_map);
        self
    }

    /// The store, read-only. Until [`NamingStage::finish`], frames in modules may not be
    /// named yet (when no sink reads names per sample).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Handle batches of events until the unwind stage hangs up, calling `on_event` with
    /// the stage and the time of each sample, and with None when sinks tick: after a
    /// batch, at most every few milliseconds, and after a while without any.
    pub fn run(&mut self, rx: &UnwoundReceiver, mut on_event: impl FnMut(&Self, Option<u64>)) {
        let mut ticked = Instant::now();
        loop {
            match rx.recv_timeout(IDLE_WAIT) {
                Ok(batch) => {
                    for ev in batch {
                        if let Some(t) = self.handle(ev) {
                            on_event(self, Some(t));
                        }
                    }
                    if ticked.elapsed() >= TICK_INTERVAL {
                        ticked = Instant::now();
                        self.tick();
                        on_event(self, None);
                    }
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    ticked = Instant::now();
                    self.tick();
                    on_event(self, None);
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Let the sinks that show something live draw it.
    fn tick(&mut self) {
        for s in &mut self.sinks {
            s.tick(&self.store);
        }
    }

    /// What the sinks say of their progress (`3 chunks sent`).
    pub fn statuses(&self) -> Vec<String> {
        self.sinks.iter().filter_map(|s| s.status()).collect()
    }

    /// Handle one event; returns the sample time for samples.
    pub fn handle(&mut self, ev: Unwound) -> Option<u64> {
        match ev {
            Unwound::Module(m) => {
                self.store.add_module(m);
                None
            }
            Unwound::ThreadName { tid, name } => {
                self.store.set_thread_name(tid, &name);
                None
            }
            Unwound::PyCode { id, info } => {
                self.namer.add_py_code(id, info);
                None
            }
            Unwound::ThreadExited(tid) => {
                self.last.remove(&tid);
                self.store.retire_thread(tid);
                None
            }
            Unwound::Repeat {
                tids,
                time_ns,
                on_cpu,
            } => {
                for tid in tids {
                    if let Some(&(stack, end)) = self.last.get(&tid) {
                        self.record(tid, time_ns, stack, end, on_cpu);
                    }
                }
                Some(time_ns)
            }
            Unwound::Sample {
                tid,
                time_ns,
                on_cpu,
                stack,
            } => {
                self.first_sample
                    .get_or_insert_with(std::time::Instant::now);
                if self
                    .max_frames
                    .is_some_and(|max| self.store.frame_count() > max)
                {
                    self.name_later_frames();
                    self.store.reset_interning();
                    self.last.clear();
                    for s in &mut self.sinks {
                        s.on_reset();
                    }
                }
                let namer = &mut self.namer;
                let later = self.name_at_end;
                let id = self
                    .store
                    .intern_thread(tid, &stack.frames, stack.end, |key, modules| {
                        if later && namer.can_name_later(key, modules) {
                            Naming::Later
                        } else {
                            Naming::Now(namer.name(key, modules))
                        }
                    });
                self.last.insert(tid, (id, stack.end));
                self.record(tid, time_ns, id, stack.end, on_cpu);
                Some(time_ns)
            }
        }
    }

    fn record(
        &mut self,
        tid: Tid,
        time_ns: u64,
        stack: Option<StackId>,
        end: StackEnd,
        on_cpu: bool,
    ) {
        let thread = self.store.add_sample(tid, stack, end, on_cpu);
        let sample = SampleRef {
            tid,
            thread,
            time_ns,
            stack,
            end,
            on_cpu,
        };
        for s in &mut self.sinks {
            s.on_sample(&sample, &self.store);
        }
    }

    /// Name the frames left to name.
    fn name_later_frames(&mut self) {
        let namer = &mut self.namer;
        self.store
            .name_later_frames(|key, modules| namer.name(key, modules));
    }

    /// End of the session: the frames left are named, then every sink writes out. Returns
    /// the store, the sinks' reports and the namer (for its counters).
    pub fn finish(mut self) -> (Store, Vec<SinkReport>, Namer) {
        self.name_later_frames();
        let NamingStage {
            namer,
            store,
            sinks,
            ..
        } = self;
        let reports = sinks.into_iter().map(|s| s.finish(&store)).collect();
        (store, reports, namer)
    }
}
