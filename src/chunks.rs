//! Turning the processor's windows of samples into Sentry profile chunks: each unique frame
//! is resolved once (names from the symbolizer, module path, absolute address) and each
//! module that appears gets its debug image entry.

use std::collections::HashMap;
use std::sync::Arc;

use crate::processor::{Processor, TimedSample};
use crate::profile::{MARKER, NO_MODULE};
use profiler_sentry::{
    ChunkBuilder, ChunkMeta, ImageInfo, InAppRules, ProfileChunk, ResolvedFrame,
};
use profiler_symbolize::Symbolizer;

/// Builds chunks from windows of samples.
pub struct ChunkMaker {
    meta: ChunkMeta,
    in_app: InAppRules,
    /// Unix time (seconds) of the session's monotonic epoch.
    wall_epoch: f64,
    window_ns: u64,
    window_start: Option<u64>,
    /// End of the last window sent: a sample that arrives later with an earlier time (its
    /// thread stopped late) is placed at this time, so chunks never overlap.
    last_cut: u64,
    resolved: HashMap<u32, Arc<[ResolvedFrame]>>,
    images: HashMap<u32, Option<ImageInfo>>,
    idx: Vec<u32>,
    frames: Vec<ResolvedFrame>,
    /// Samples put into chunks so far.
    pub samples_in_chunks: u64,
    /// Samples left out (threads with a single sample in a window, which Sentry drops).
    pub samples_left_out: u64,
    /// Chunks made so far.
    pub chunks: u64,
}

impl ChunkMaker {
    /// A maker of windows of `window_secs` seconds.
    pub fn new(meta: ChunkMeta, in_app: InAppRules, wall_epoch: f64, window_secs: f64) -> Self {
        ChunkMaker {
            meta,
            in_app,
            wall_epoch,
            window_ns: (window_secs * 1e9) as u64,
            window_start: None,
            last_cut: 0,
            resolved: HashMap::new(),
            images: HashMap::new(),
            idx: Vec::new(),
            frames: Vec::new(),
            samples_in_chunks: 0,
            samples_left_out: 0,
            chunks: 0,
        }
    }

    /// Forget resolved frames (after the processor forgot its interned frames).
    pub fn reset_frames(&mut self) {
        self.resolved.clear();
    }

    /// True when a sample at `t_ns` closes the current window.
    pub fn due(&mut self, t_ns: u64) -> bool {
        let start = *self.window_start.get_or_insert(t_ns);
        t_ns.saturating_sub(start) >= self.window_ns
    }

    /// Build the chunks of the window that is due (see `due`): the samples before its end;
    /// later ones open the next window.
    pub fn make_due(&mut self, p: &mut Processor, sym: &mut Symbolizer) -> Vec<ProfileChunk> {
        let Some(start) = self.window_start else {
            return Vec::new();
        };
        let cut = start + self.window_ns;
        let samples = p.take_window_before(cut);
        self.window_start = Some(cut);
        let out = self.build(p, sym, samples);
        self.last_cut = cut;
        out
    }

    /// Build the chunks of everything in the processor's window (the last flush).
    pub fn make(&mut self, p: &mut Processor, sym: &mut Symbolizer) -> Vec<ProfileChunk> {
        let samples = p.take_window();
        self.window_start = None;
        let end = samples.iter().map(|s| s.time_ns + 1).max().unwrap_or(0);
        let out = self.build(p, sym, samples);
        self.last_cut = self.last_cut.max(end);
        out
    }

    /// Build chunks (usually one; a window longer than Sentry allows is split).
    fn build(
        &mut self,
        p: &mut Processor,
        sym: &mut Symbolizer,
        samples: Vec<TimedSample>,
    ) -> Vec<ProfileChunk> {
        let mut out = Vec::new();
        let mut builder = ChunkBuilder::new(&self.meta, &self.in_app);
        let mut used_modules: Vec<u32> = Vec::new();
        let mut total = 0u64;
        for s in &samples {
            self.resolve_stack(p, sym, s, &mut used_modules);
            let name = p
                .profile
                .threads()
                .get(&s.tid)
                .map(|t| t.name.as_str())
                .unwrap_or("");
            let ts = self.wall_epoch + s.time_ns.max(self.last_cut) as f64 / 1e9;
            total += 1;
            if builder.add_sample(s.tid, name, ts, &self.frames).is_err() {
                self.finish(&mut builder, p, &mut used_modules, &mut out);
                builder = ChunkBuilder::new(&self.meta, &self.in_app);
                let _ = builder.add_sample(s.tid, name, ts, &self.frames);
            }
        }
        self.finish(&mut builder, p, &mut used_modules, &mut out);
        let in_chunks: u64 = out.iter().map(|c| c.sample_count() as u64).sum();
        self.samples_in_chunks += in_chunks;
        self.samples_left_out += total - in_chunks;
        self.chunks += out.len() as u64;
        out
    }

    fn finish(
        &mut self,
        builder: &mut ChunkBuilder,
        p: &Processor,
        used: &mut Vec<u32>,
        out: &mut Vec<ProfileChunk>,
    ) {
        used.sort_unstable();
        used.dedup();
        for &id in used.iter() {
            let img = self.images.entry(id).or_insert_with(|| {
                let m = p.modules.module(id)?;
                let data = &m.desc.as_ref()?.data;
                ImageInfo::from_elf(&m.path, data, m.image_addr, m.image_size)
            });
            if let Some(img) = img {
                builder.add_image(img.clone());
            }
        }
        used.clear();
        let b = std::mem::replace(builder, ChunkBuilder::new(&self.meta, &self.in_app));
        if let Some(c) = b.finish() {
            out.push(c);
        }
    }

    /// Fill `self.frames` with the sample's frames, leaf first, inlined frames sharing
    /// their address.
    fn resolve_stack(
        &mut self,
        p: &mut Processor,
        sym: &mut Symbolizer,
        s: &TimedSample,
        used: &mut Vec<u32>,
    ) {
        self.frames.clear();
        let Some(stack) = s.stack else { return };
        p.profile.stack_frames(stack, &mut self.idx);
        for i in 0..self.idx.len() {
            let f = self.idx[i];
            let key = p.profile.frames()[f as usize];
            if key.module == MARKER {
                continue;
            }
            if key.module != NO_MODULE {
                used.push(key.module);
            }
            let resolved = match self.resolved.get(&f) {
                Some(r) => r.clone(),
                None => {
                    let names = p.names(f, sym);
                    let module: Option<Arc<str>> = p
                        .modules
                        .module(key.module)
                        .map(|m| Arc::from(m.path.as_str()));
                    let named = key.module != NO_MODULE;
                    let r: Arc<[ResolvedFrame]> = names
                        .iter()
                        .map(|n| ResolvedFrame {
                            instruction_addr: key.addr,
                            function: (named && !n.function.contains("+0x"))
                                .then(|| Arc::from(n.function.as_str())),
                            file: n.file.as_deref().map(Arc::from),
                            line: n.line,
                            module: module.clone(),
                        })
                        .collect();
                    self.resolved.insert(f, r.clone());
                    r
                }
            };
            self.frames.extend(resolved.iter().cloned());
        }
    }
}
