//! The unwind stage: takes a source's events in order, keeps the target's module map
//! current, unwinds each captured stack (after the thread already runs again) and passes
//! frame keys on. It never names anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{FrameKey, NO_MODULE, Unwound, UnwoundSender, UnwoundStack};
use crate::modules::{ModuleMap, ModuleSource, WithCode};
use crate::procmaps;
use crate::python::code::{CodeCache, Resolved};
use crate::python::merge::{self, Merged, PyItem};
use crate::python::{PyRawStack, PythonTarget, ReadMemory};
use crate::source::stack_cache::SampleStack;
use crate::source::{BufferPool, Captured, EventReceiver, SourceEvent};
use crate::types::{FrameAddr, StackEnd, Tid};
use profiler_unwind::{Unwinder, WalkMemo};

/// Counters of the unwind stage.
#[derive(Clone, Debug, Default)]
pub struct UnwindStats {
    /// Unwinds done.
    pub unwinds: u64,
    /// Maps re-read because an address was in no known module.
    pub maps_rereads: u64,
    /// Time spent unwinding.
    pub unwind_time: Duration,
    /// Frames produced.
    pub frames: u64,
    /// Modules seen.
    pub modules: usize,
    /// Modules whose file could not be used, with the reason.
    pub module_errors: Vec<(String, String)>,
    /// Python: what the merge did.
    pub python: PyMergeStats,
}

/// Counters of the Python merge.
#[derive(Clone, Debug, Default)]
pub struct PyMergeStats {
    /// The interpreter, when one was found (`CPython 3.11.7`).
    pub interpreter: Option<String>,
    /// Samples that came with Python frames.
    pub samples: u64,
    /// ...merged frame for frame (one Python group per eval-loop frame).
    pub merged: u64,
    /// ...whose counts did not match: the Python stack alone was shown.
    pub fallback: u64,
    /// ...whose Python frame chain ended early (an unreadable pointer).
    pub incomplete: u64,
    /// Python frames whose code object could not be read.
    pub unreadable: u64,
    /// Code objects read; cache hits; cached entries found replaced.
    pub code_reads: u64,
    /// Code-object cache hits.
    pub code_hits: u64,
    /// Cached code objects found replaced by another object at the same address.
    pub code_stale: u64,
}

/// The Python side of the unwind stage: resolves code objects (reading the target's
/// memory after the thread runs again; cached, guarded against reuse) and merges the
/// Python frames into the native stack. It lives here, not in the naming stage, because
/// it needs the target's memory, and the naming stage must not reach back to the target.
struct PyStage {
    target: Arc<PythonTarget>,
    cache: CodeCache,
    sent: usize,
    items: Vec<PyItem<FrameKey>>,
    merged: Vec<Merged<FrameKey, FrameKey>>,
}

/// The unwind stage.
pub struct UnwindStage<S: ModuleSource> {
    files: S,
    /// Reads the target's maps again after a miss; None when there is no live target.
    reread: Option<Box<dyn FnMut() -> Option<String> + Send>>,
    modules: ModuleMap,
    modules_sent: usize,
    unwinder: Unwinder,
    frames: Vec<FrameAddr>,
    /// Stack buffers go back to the source.
    pool: BufferPool,
    /// Stack bytes in flight from the source.
    in_flight: Arc<AtomicUsize>,
    last_reread: Option<Instant>,
    stats: UnwindStats,
    /// The target's memory, for Python code objects.
    py_memory: Option<Box<dyn ReadMemory + Send>>,
    python: Option<PyStage>,
    show_internals: bool,
    /// Per thread with a deep (shared-tail) stack: its last walk, and the shared buffer
    /// (id, first address) that walk read, so the next walk can copy its outer frames.
    memos: HashMap<Tid, (WalkMemo, u64, u64)>,
}

impl<S: ModuleSource> UnwindStage<S> {
    /// A stage reading module files through `files`.
    pub fn new(files: S, max_frames: usize, pool: BufferPool, in_flight: Arc<AtomicUsize>) -> Self {
        UnwindStage {
            files,
            reread: None,
            modules: ModuleMap::new(),
            modules_sent: 0,
            unwinder: Unwinder::new(max_frames),
            frames: Vec::with_capacity(max_frames),
            pool,
            in_flight,
            last_reread: None,
            stats: UnwindStats::default(),
            py_memory: None,
            python: None,
            show_internals: false,
            memos: HashMap::new(),
        }
    }

    /// Read Python code objects from `mem` (the live target); `show_internals`: keep the
    /// interpreter's own frames (`--python-internals`).
    pub fn with_python(mut self, mem: Box<dyn ReadMemory + Send>, show_internals: bool) -> Self {
        self.py_memory = Some(mem);
        self.show_internals = show_internals;
        self
    }

    /// How to read the maps again when an address is in no known module.
    pub fn with_reread(mut self, f: impl FnMut() -> Option<String> + Send + 'static) -> Self {
        self.reread = Some(Box::new(f));
        self
    }

    /// Handle every batch of events until the source hangs up, passing each batch's
    /// results on as one batch; returns the counters. When the next stage is gone the
    /// events are still drained (so stack buffers go back), but nothing more is unwound.
    /// The stage sleeps while the channel is empty: it wakes when the source has sent a
    /// round's events, not on a timer.
    pub fn run(mut self, rx: &EventReceiver, tx: &UnwoundSender) -> UnwindStats {
        let mut open = true;
        for batch in rx.iter() {
            if !open {
                batch.into_iter().for_each(|ev| self.release(ev));
                continue;
            }
            let mut out = Vec::with_capacity(batch.len());
            for ev in batch {
                self.handle(ev, &mut |u| out.push(u));
            }
            if !out.is_empty() {
                open = tx.send(out).is_ok();
            }
        }
        self.finish()
    }

    /// The counters, once the events are all handled.
    pub fn finish(mut self) -> UnwindStats {
        self.stats.modules = self.modules.all().len();
        self.stats.module_errors = self
            .modules
            .all()
            .iter()
            .filter_map(|m| Some((m.path.clone(), m.load_error.clone()?)))
            .collect();
        self.stats
    }

    /// Give a stack buffer back without unwinding it.
    fn release(&mut self, ev: SourceEvent) {
        if let SourceEvent::Sample(s) = ev {
            let n = s.stack_bytes();
            if let Captured::Stack { stack, .. } = s.captured {
                self.in_flight.fetch_sub(n, Ordering::Relaxed);
                self.pool.give(stack.bytes);
            }
        }
    }

    /// Handle one event, passing what it yields to `out`.
    pub fn handle(&mut self, ev: SourceEvent, out: &mut impl FnMut(Unwound)) {
        match ev {
            SourceEvent::Maps(text) => {
                // A remembered walk stands for the modules it saw.
                self.memos.clear();
                self.modules.update(&procmaps::parse(&text), &self.files);
                self.send_new_modules(out);
            }
            SourceEvent::ThreadName { tid, name } => out(Unwound::ThreadName { tid, name }),
            SourceEvent::ThreadExited(tid) => {
                self.memos.remove(&tid);
                out(Unwound::ThreadExited(tid))
            }
            SourceEvent::Python(target) => {
                self.stats.python.interpreter = Some(format!("CPython {}", target.version));
                self.python = Some(PyStage {
                    target,
                    cache: CodeCache::new(),
                    sent: 0,
                    items: Vec::new(),
                    merged: Vec::new(),
                });
            }
            SourceEvent::Repeat {
                tids,
                time_ns,
                on_cpu,
            } => out(Unwound::Repeat {
                tids,
                time_ns,
                on_cpu,
            }),
            SourceEvent::Sample(s) => {
                let counted = s.stack_bytes();
                let end = match s.captured {
                    Captured::Stack { regs, stack, tail } => {
                        let t0 = Instant::now();
                        let mem = SampleStack {
                            head: &stack,
                            tail: tail.as_ref(),
                        };
                        let with_code = WithCode(&self.modules, &self.files);
                        let mut end = match &tail {
                            // A deep stack: go on from the thread's last walk where the
                            // two read the same shared bytes.
                            Some(t) => {
                                let (memo, id, from) = self.memos.entry(s.tid).or_default();
                                let same_from = if *id == t.buffer_id() {
                                    t.start().max(*from)
                                } else {
                                    u64::MAX
                                };
                                (*id, *from) = (t.buffer_id(), t.start());
                                self.unwinder.unwind_reusing(
                                    &regs,
                                    &mem,
                                    &with_code,
                                    &mut self.frames,
                                    memo,
                                    same_from,
                                )
                            }
                            None => {
                                self.memos.remove(&s.tid);
                                self.unwinder
                                    .unwind(&regs, &mem, &with_code, &mut self.frames)
                            }
                        };
                        if (self.modules.find_module(regs.ip()).is_none()
                            || end == StackEnd::Unknown)
                            && self.reread_maps()
                        {
                            self.memos.clear();
                            self.send_new_modules(out);
                            end = self.unwinder.unwind(
                                &regs,
                                &mem,
                                &WithCode(&self.modules, &self.files),
                                &mut self.frames,
                            );
                        }
                        self.stats.unwinds += 1;
                        self.stats.unwind_time += t0.elapsed();
                        self.in_flight.fetch_sub(counted, Ordering::Relaxed);
                        self.pool.give(stack.bytes);
                        end
                    }
                    Captured::Frames { frames, end } => {
                        self.frames = frames;
                        end
                    }
                };
                self.stats.frames += self.frames.len() as u64;
                let mut frames: Vec<FrameKey> = self
                    .frames
                    .iter()
                    .map(|f| FrameKey {
                        module: self
                            .modules
                            .find_module(f.lookup_addr())
                            .map_or(NO_MODULE, |m| m.id),
                        addr: f.addr,
                        is_return: f.is_return,
                    })
                    .collect();
                if self.python.is_some() {
                    frames = self.with_python_frames(frames, s.python.as_ref(), out);
                }
                out(Unwound::Sample {
                    tid: s.tid,
                    time_ns: s.time_ns,
                    on_cpu: s.on_cpu,
                    stack: UnwoundStack { frames, end },
                });
            }
        }
    }

    /// Merge a sample's Python frames into its native frames (or, without Python frames,
    /// hide the interpreter's internals).
    fn with_python_frames(
        &mut self,
        native: Vec<FrameKey>,
        raw: Option<&PyRawStack>,
        out: &mut impl FnMut(Unwound),
    ) -> Vec<FrameKey> {
        let Some(py) = self.python.as_mut() else {
            return native;
        };
        let t = py.target.clone();
        let is_eval = |k: &FrameKey| t.is_eval(k.lookup_addr());
        let is_internal = |k: &FrameKey| t.is_interpreter(k.lookup_addr());
        let show = self.show_internals;
        let st = &mut self.stats.python;
        let (Some(raw), Some(mem)) = (raw, self.py_memory.as_deref()) else {
            return if show {
                native
            } else {
                merge::hide_internals(&native, is_eval, is_internal)
            };
        };
        st.samples += 1;
        if !raw.complete {
            st.incomplete += 1;
        }
        py.items.clear();
        for f in &raw.frames {
            let frame = if f.code == 0 {
                None
            } else {
                match py
                    .cache
                    .resolve(mem, &t.layout, t.code_type, f.code, f.instr)
                {
                    Resolved::Frame { id, line } => Some(FrameKey::python(id, line)),
                    Resolved::Incomplete => None,
                    Resolved::Unreadable => {
                        st.unreadable += 1;
                        None
                    }
                }
            };
            py.items.push(PyItem {
                frame,
                entry: f.entry,
            });
        }
        st.code_reads = py.cache.reads;
        st.code_hits = py.cache.hits;
        st.code_stale = py.cache.stale;
        while py.sent < py.cache.len() {
            let id = py.sent as u32;
            if let Some(info) = py.cache.info(id) {
                out(Unwound::PyCode {
                    id,
                    info: info.clone(),
                });
            }
            py.sent += 1;
        }
        let ok = merge::merge(
            &native,
            &py.items,
            is_eval,
            is_internal,
            show,
            &mut py.merged,
        );
        if ok {
            st.merged += 1;
        } else {
            st.fallback += 1;
        }
        py.merged
            .iter()
            .map(|m| match *m {
                Merged::Native(k) | Merged::Python(k) => k,
            })
            .collect()
    }

    fn send_new_modules(&mut self, out: &mut impl FnMut(Unwound)) {
        let all = self.modules.all();
        for m in &all[self.modules_sent.min(all.len())..] {
            out(Unwound::Module(m.clone()));
        }
        self.modules_sent = all.len();
    }

    /// Re-read the maps after a miss, at most every 10 ms. True when they changed.
    fn reread_maps(&mut self) -> bool {
        let Some(reread) = self.reread.as_mut() else {
            return false;
        };
        if self
            .last_reread
            .is_some_and(|t| t.elapsed() < Duration::from_millis(10))
        {
            return false;
        }
        self.last_reread = Some(Instant::now());
        let Some(text) = reread() else {
            return false;
        };
        self.stats.maps_rereads += 1;
        let g = self.modules.generation();
        self.modules.update(&procmaps::parse(&text), &self.files);
        self.modules.generation() != g
    }
}
