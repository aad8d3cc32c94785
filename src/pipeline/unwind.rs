//! The unwind stage: takes a source's events in order, keeps the target's module map
//! current, unwinds each captured stack (after the thread already runs again) and passes
//! frame keys on. It never names anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::{FrameKey, NO_MODULE, Unwound, UnwoundStack};
use crate::modules::{ModuleMap, ModuleSource, WithCode};
use crate::procmaps;
use crate::source::{BufferPool, Captured, SourceEvent};
use crate::types::{FrameAddr, StackEnd};
use profiler_unwind::Unwinder;

/// How often the stage looks for new events when its channel is empty.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

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
        }
    }

    /// How to read the maps again when an address is in no known module.
    pub fn with_reread(mut self, f: impl FnMut() -> Option<String> + Send + 'static) -> Self {
        self.reread = Some(Box::new(f));
        self
    }

    /// Handle every event until the source hangs up, passing results to `tx`; returns the
    /// counters. When the next stage is gone the events are still drained (so stack
    /// buffers go back), but nothing more is unwound.
    ///
    /// The channel is polled every few milliseconds rather than waited on: a receiver
    /// blocked in `recv` must be woken by the source's next send (a futex wake, often a
    /// cross-CPU interrupt, on every tick), while one that looks on its own timer costs the
    /// source nothing.
    pub fn run(mut self, rx: &Receiver<SourceEvent>, tx: &Sender<Unwound>) -> UnwindStats {
        let mut open = true;
        loop {
            match rx.try_recv() {
                Ok(ev) => {
                    if open {
                        self.handle(ev, &mut |u| open &= tx.send(u).is_ok());
                    } else {
                        self.release(ev);
                    }
                }
                Err(TryRecvError::Empty) => std::thread::sleep(POLL_INTERVAL),
                Err(TryRecvError::Disconnected) => break,
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
        if let SourceEvent::Sample(s) = ev
            && let Captured::Stack { stack, .. } = s.captured
        {
            self.in_flight
                .fetch_sub(stack.bytes.len(), Ordering::Relaxed);
            self.pool.give(stack.bytes);
        }
    }

    /// Handle one event, passing what it yields to `out`.
    pub fn handle(&mut self, ev: SourceEvent, out: &mut impl FnMut(Unwound)) {
        match ev {
            SourceEvent::Maps(text) => {
                self.modules.update(&procmaps::parse(&text), &self.files);
                self.send_new_modules(out);
            }
            SourceEvent::ThreadName { tid, name } => out(Unwound::ThreadName { tid, name }),
            SourceEvent::ThreadExited(tid) => out(Unwound::ThreadExited(tid)),
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
                let end = match s.captured {
                    Captured::Stack { regs, stack } => {
                        let t0 = Instant::now();
                        let mut end = self.unwinder.unwind(
                            &regs,
                            &stack,
                            &WithCode(&self.modules, &self.files),
                            &mut self.frames,
                        );
                        if (self.modules.find_module(regs.ip()).is_none()
                            || end == StackEnd::Unknown)
                            && self.reread_maps()
                        {
                            self.send_new_modules(out);
                            end = self.unwinder.unwind(
                                &regs,
                                &stack,
                                &WithCode(&self.modules, &self.files),
                                &mut self.frames,
                            );
                        }
                        self.stats.unwinds += 1;
                        self.stats.unwind_time += t0.elapsed();
                        self.in_flight
                            .fetch_sub(stack.bytes.len(), Ordering::Relaxed);
                        self.pool.give(stack.bytes);
                        end
                    }
                    Captured::Frames { frames, end } => {
                        self.frames = frames;
                        end
                    }
                };
                self.stats.frames += self.frames.len() as u64;
                let frames = self
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
                out(Unwound::Sample {
                    tid: s.tid,
                    time_ns: s.time_ns,
                    on_cpu: s.on_cpu,
                    stack: UnwoundStack { frames, end },
                });
            }
        }
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
