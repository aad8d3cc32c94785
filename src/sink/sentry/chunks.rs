//! The Sentry sink: samples go into a chunk as they arrive; a chunk is closed when a
//! sample's time passes the end of its window (or Sentry's span limit) and handed to the
//! uploader. Each unique frame becomes the chunk format's frames once; each module a
//! chunk's samples touch gets its debug image entry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::{UploadStats, UploaderHandle};
use crate::pipeline::profile::Store;
use crate::pipeline::{FrameKind, NO_MODULE, PY_MODULE};
use crate::sink::{SampleRef, Sink, SinkReport};
use profiler_sentry::{
    ChunkBuilder, ChunkMeta, FramePlatform, ImageInfo, InAppRules, ProfileChunk, ResolvedFrame,
};

/// Where finished chunks go.
pub enum ChunkOut {
    /// The uploader thread (a DSN, or envelope files).
    Uploader {
        /// Its channel.
        chunks: Sender<ProfileChunk>,
        /// Its handle, to wait for it at the end.
        handle: UploaderHandle,
        /// Envelope output, when writing files rather than sending.
        output: Option<PathBuf>,
    },
    /// Kept in memory (tests).
    Memory(Vec<ProfileChunk>),
}

/// Builds Sentry profile chunks from the samples as they arrive.
pub struct SentrySink {
    meta: ChunkMeta,
    in_app: InAppRules,
    /// Unix time (seconds) of the session's monotonic epoch.
    wall_epoch: f64,
    window_ns: u64,
    window_start: Option<u64>,
    /// End of the last window closed: a sample that arrives later with an earlier time
    /// (its thread stopped late) is placed at this time, so chunks never overlap.
    last_cut: u64,
    builder: ChunkBuilder,
    /// Modules used by the samples of the open chunk, with their address ranges.
    used_modules: Vec<u32>,
    open_images: rustc_hash::FxHashMap<u32, (u64, u64)>,
    /// Modules of the sample being added.
    sample_modules: Vec<u32>,
    /// Chunks closed early because a module took the addresses of another one in them.
    pub closed_at_swaps: u64,
    resolved: HashMap<u32, Arc<[ResolvedFrame]>>,
    images: HashMap<u32, Option<ImageInfo>>,
    idx: Vec<u32>,
    frames: Vec<ResolvedFrame>,
    samples_in_open: u64,
    out: ChunkOut,
    /// Samples put into chunks so far.
    pub samples_in_chunks: u64,
    /// Samples left out (threads with a single sample in a window, which Sentry drops).
    pub samples_left_out: u64,
    /// Chunks made so far.
    pub chunks: u64,
}

impl SentrySink {
    /// A sink making chunks of `window_secs` seconds.
    pub fn new(
        meta: ChunkMeta,
        in_app: InAppRules,
        wall_epoch: f64,
        window_secs: f64,
        out: ChunkOut,
    ) -> Self {
        SentrySink {
            builder: ChunkBuilder::new(&meta, &in_app),
            meta,
            in_app,
            wall_epoch,
            window_ns: (window_secs * 1e9) as u64,
            window_start: None,
            last_cut: 0,
            used_modules: Vec::new(),
            open_images: Default::default(),
            sample_modules: Vec::new(),
            closed_at_swaps: 0,
            resolved: HashMap::new(),
            images: HashMap::new(),
            idx: Vec::new(),
            frames: Vec::new(),
            samples_in_open: 0,
            out,
            samples_in_chunks: 0,
            samples_left_out: 0,
            chunks: 0,
        }
    }

    /// The chunks kept in memory (with [`ChunkOut::Memory`]).
    pub fn kept(&self) -> &[ProfileChunk] {
        match &self.out {
            ChunkOut::Memory(v) => v,
            ChunkOut::Uploader { .. } => &[],
        }
    }

    /// Close the open chunk (if it has samples) and pass it on.
    fn close(&mut self, store: &Store) {
        self.used_modules.sort_unstable();
        self.used_modules.dedup();
        for &id in &self.used_modules {
            let img = self.images.entry(id).or_insert_with(|| {
                let m = store.module(id)?;
                let data = &m.desc.as_ref()?.data;
                ImageInfo::from_elf(&m.path, data, m.image_addr, m.image_size)
            });
            if let Some(img) = img {
                self.builder.add_image(img.clone());
            }
        }
        self.used_modules.clear();
        self.open_images.clear();
        let b = std::mem::replace(
            &mut self.builder,
            ChunkBuilder::new(&self.meta, &self.in_app),
        );
        let total = std::mem::take(&mut self.samples_in_open);
        let Some(c) = b.finish() else {
            self.samples_left_out += total;
            return;
        };
        let n = c.sample_count() as u64;
        self.samples_in_chunks += n;
        self.samples_left_out += total - n;
        self.chunks += 1;
        match &mut self.out {
            ChunkOut::Uploader { chunks, .. } => {
                let _ = chunks.send(c);
            }
            ChunkOut::Memory(v) => v.push(c),
        }
    }

    /// Add the sample's modules to the open chunk's. A module over the addresses of
    /// another one the chunk already holds (a library unloaded and another loaded in its
    /// place) closes the chunk first: the debug images of one chunk never overlap, so
    /// Sentry can tell which image each address belongs to.
    fn note_modules(&mut self, store: &Store) {
        let mut modules = std::mem::take(&mut self.sample_modules);
        modules.sort_unstable();
        modules.dedup();
        let range = |id: u32| {
            store
                .module(id)
                .map_or((0, 0), |m| (m.image_addr, m.image_addr + m.image_size))
        };
        let swapped = modules.iter().any(|&id| {
            if self.open_images.contains_key(&id) {
                return false;
            }
            let (lo, hi) = range(id);
            self.open_images
                .values()
                .any(|&(a, b)| lo < b && a < hi && lo < hi)
        });
        if swapped && self.samples_in_open > 0 {
            self.closed_at_swaps += 1;
            self.close(store);
        }
        for &id in &modules {
            if let std::collections::hash_map::Entry::Vacant(e) = self.open_images.entry(id) {
                e.insert(range(id));
                self.used_modules.push(id);
            }
        }
        self.sample_modules = modules;
    }

    /// Fill `self.frames` with the sample's frames, leaf first, inlined frames sharing
    /// their address; markers are left out.
    fn resolve_stack(&mut self, store: &Store, sample: &SampleRef) {
        self.frames.clear();
        let Some(stack) = sample.stack else { return };
        store.stack_frames(stack, &mut self.idx);
        for &f in &self.idx {
            let key = store.frame_key(f);
            if key.module != NO_MODULE && key.module != PY_MODULE {
                self.sample_modules.push(key.module);
            }
            let resolved = self.resolved.entry(f).or_insert_with(|| {
                store
                    .names(f)
                    .iter()
                    .filter_map(|n| {
                        let platform = match n.kind {
                            FrameKind::Native => FramePlatform::Native,
                            FrameKind::Python => FramePlatform::Python,
                            FrameKind::Marker(_) => return None,
                        };
                        Some(ResolvedFrame {
                            platform,
                            instruction_addr: n.addr,
                            function: n.function.clone(),
                            file: n.file.clone(),
                            line: n.line,
                            module: n.module.clone(),
                        })
                    })
                    .collect()
            });
            self.frames.extend(resolved.iter().cloned());
        }
    }
}

impl Sink for SentrySink {
    fn on_sample(&mut self, sample: &SampleRef, store: &Store) {
        let t = sample.time_ns;
        let start = *self.window_start.get_or_insert(t);
        if t.saturating_sub(start) >= self.window_ns {
            // The window is over: close its chunk; later samples open the next one.
            let cut = start + self.window_ns;
            self.close(store);
            self.last_cut = cut;
            self.window_start = Some(cut);
        }
        self.sample_modules.clear();
        self.resolve_stack(store, sample);
        self.note_modules(store);
        let name = store.thread_name_of(sample.tid);
        let ts = self.wall_epoch + t.max(self.last_cut) as f64 / 1e9;
        self.samples_in_open += 1;
        if self
            .builder
            .add_sample(sample.tid, name, ts, &self.frames)
            .is_err()
        {
            // Past Sentry's span limit: close this chunk, start the next with this sample.
            self.samples_in_open -= 1;
            self.close(store);
            self.samples_in_open += 1;
            for &id in &self.sample_modules {
                let m = store.module(id);
                let r = m.map_or((0, 0), |m| (m.image_addr, m.image_addr + m.image_size));
                self.open_images.insert(id, r);
                self.used_modules.push(id);
            }
            let _ = self.builder.add_sample(sample.tid, name, ts, &self.frames);
        }
    }

    fn status(&self) -> Option<String> {
        Some(match &self.out {
            ChunkOut::Uploader { handle, .. } => {
                let st = handle.stats();
                if st.chunks_written > 0 {
                    format!("{} chunks written", st.chunks_written)
                } else {
                    format!(
                        "{} chunks sent, {} spooled",
                        st.chunks_accepted, st.chunks_spooled
                    )
                }
            }
            ChunkOut::Memory(v) => format!("{} chunks", v.len()),
        })
    }

    fn on_reset(&mut self) {
        // Resolved frames are keyed by the store's frame indexes, now invalid. The open
        // chunk holds frames by value, so it stays as it is.
        self.resolved.clear();
    }

    fn finish(mut self: Box<Self>, store: &Store) -> SinkReport {
        self.close(store);
        let mut report = SinkReport::default();
        report.lines.push(format!(
            "sentry: profiler_id {}; {} chunks with {} samples ({} samples of threads with a single sample in a window left out, as Sentry requires)",
            self.meta.profiler_id, self.chunks, self.samples_in_chunks, self.samples_left_out
        ));
        if self.closed_at_swaps > 0 {
            report.lines.push(format!(
                "sentry: {} chunks closed early where a library took the place of another (no chunk lists two images at one address)",
                self.closed_at_swaps
            ));
        }
        if let ChunkOut::Uploader {
            chunks,
            handle,
            output,
        } = std::mem::replace(&mut self.out, ChunkOut::Memory(Vec::new()))
        {
            drop(chunks);
            let stats: UploadStats = handle.finish();
            report.lines.push(format!("sentry: {stats}"));
            report
                .failures
                .extend(write_failure(&stats, output.as_deref()));
            if let Some(o) = output
                && stats.chunks_written > 0
            {
                report
                    .lines
                    .push(format!("sentry: envelopes written to {}", o.display()));
            }
        }
        report
    }
}

/// The failure to report when chunks could not be written (to envelope files at `output`,
/// or to the spool): the run then ends with an error.
pub fn write_failure(stats: &UploadStats, output: Option<&std::path::Path>) -> Option<String> {
    let why = stats.write_error.as_deref()?;
    let lost = stats.dropped_io;
    Some(match output {
        Some(o) if stats.chunks_written == 0 => format!(
            "envelopes {}: {lost} chunk(s) could not be written ({why}); nothing was written there",
            o.display()
        ),
        Some(o) => format!(
            "envelopes {}: {lost} chunk(s) could not be written ({why}); only {} of {} were \
             written there",
            o.display(),
            stats.chunks_written,
            stats.chunks_written + lost
        ),
        None => format!("the spool: {lost} chunk(s) could not be stored ({why}) and were not sent"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{FrameKey, NamedFrame};
    use crate::types::StackEnd;

    fn named(key: &FrameKey, _: &[Arc<crate::modules::Module>]) -> Vec<NamedFrame> {
        let mut n = NamedFrame::marker(StackEnd::Root);
        n.kind = FrameKind::Native;
        n.addr = key.addr;
        n.function = Some(format!("f{:x}", key.addr).into());
        n.label = n.function.clone().unwrap();
        vec![n]
    }

    #[test]
    fn failed_writes_are_failures() {
        let mut st = UploadStats::default();
        assert_eq!(write_failure(&st, Some(std::path::Path::new("/o/"))), None);
        st.dropped_io = 2;
        st.write_error = Some("/o/x.envelope: No such file or directory".into());
        let f = write_failure(&st, Some(std::path::Path::new("/o/"))).unwrap();
        assert!(
            f.starts_with("envelopes /o/: 2 chunk(s) could not be written (/o/x.envelope: No such")
                && f.ends_with("nothing was written there"),
            "{f}"
        );
        st.chunks_written = 3;
        let f = write_failure(&st, Some(std::path::Path::new("/o/"))).unwrap();
        assert!(f.ends_with("only 3 of 5 were written there"), "{f}");
        let f = write_failure(&st, None).unwrap();
        assert!(
            f.starts_with("the spool: 2 chunk(s) could not be stored"),
            "{f}"
        );
    }

    #[test]
    fn windows_cut_by_sample_time_and_never_overlap() {
        let meta = ChunkMeta {
            profiler_id: profiler_sentry::new_profiler_id(),
            release: None,
            environment: None,
        };
        let mut sink = Box::new(SentrySink::new(
            meta,
            InAppRules::default(),
            1_700_000_000.0,
            1.0,
            ChunkOut::Memory(Vec::new()),
        ));
        let mut store = Store::new();
        let key = |a| FrameKey {
            module: NO_MODULE,
            addr: a,
            is_return: false,
        };
        let s = store.intern(&[key(0x10), key(0x20)], StackEnd::Truncated, named);
        // 10 ms apart for 2.5 s, plus one late sample from before the first cut.
        let mut times: Vec<u64> = (0..250).map(|i| i * 10_000_000).collect();
        times.insert(150, 500_000_000);
        // Sentry's chunks are wall-clock: waiting samples (every other one here) count too.
        for (i, t) in times.into_iter().enumerate() {
            let on_cpu = i % 2 == 0;
            let thread = store.add_sample(7, s, StackEnd::Truncated, on_cpu);
            let r = SampleRef {
                tid: 7,
                thread,
                time_ns: t,
                stack: s,
                end: StackEnd::Truncated,
                on_cpu,
            };
            sink.on_sample(&r, &store);
        }
        sink.close(&store);
        let chunks = sink.kept();
        assert_eq!(chunks.len(), 3);
        assert_eq!(sink.samples_in_chunks, 251);
        let mut last_end = 0.0;
        for c in chunks {
            let ts: Vec<f64> = c.profile.samples.iter().map(|s| s.timestamp).collect();
            let (lo, hi) = ts
                .iter()
                .fold((f64::MAX, 0.0f64), |(a, b), &t| (a.min(t), b.max(t)));
            assert!(lo >= last_end, "chunks overlap: {lo} < {last_end}");
            last_end = hi;
            // Markers are not frames in Sentry: two frames per sample.
            assert_eq!(c.profile.frames.len(), 2);
            profiler_sentry::validate(&serde_json::from_slice(&c.to_json()).unwrap()).unwrap();
        }
    }
}
