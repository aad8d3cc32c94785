//! speedscope's file format (`*.speedscope.json`): one sampled profile per thread, in the
//! order the samples were taken (speedscope's "Time Order" view), consecutive samples with
//! the same stack merged into one with their weights added. Frames are shared by all
//! threads: one per (function, source file), so a function is one node whatever line it
//! was at; inlined functions are frames of their own. Weights are seconds (samples over
//! the rate).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;

use super::output::{self, Format, OutputFile};
use super::{SampleRef, SessionInfo, Sink, SinkReport};
use crate::pipeline::profile::{StackId, Store};
use crate::types::Tid;

/// The value speedscope requires in `$schema`.
pub const SCHEMA: &str = "https://www.speedscope.app/file-format-schema.json";

/// The speedscope sink.
pub struct SpeedscopeSink {
    outputs: Arc<Vec<OutputFile>>,
    info: SessionInfo,
    threads: BTreeMap<Tid, Runs>,
}

/// A thread's samples: its latest name id, and runs of one stack in time order.
#[derive(Default)]
struct Runs {
    name: u32,
    runs: Vec<(StackId, u32)>,
}

#[derive(Serialize)]
struct File {
    #[serde(rename = "$schema")]
    schema: &'static str,
    shared: Shared,
    profiles: Vec<Profile>,
    name: String,
    #[serde(rename = "activeProfileIndex")]
    active_profile_index: usize,
    exporter: String,
}

#[derive(Serialize)]
struct Shared {
    frames: Vec<Frame>,
}

#[derive(Serialize, PartialEq, Eq, Hash, Clone)]
struct Frame {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
}

#[derive(Serialize)]
struct Profile {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    unit: &'static str,
    #[serde(rename = "startValue")]
    start_value: f64,
    #[serde(rename = "endValue")]
    end_value: f64,
    samples: Vec<Vec<usize>>,
    weights: Vec<f64>,
}

impl SpeedscopeSink {
    /// A sink writing the speedscope ones of `outputs`.
    pub fn new(outputs: Arc<Vec<OutputFile>>, info: SessionInfo) -> Self {
        SpeedscopeSink {
            outputs,
            info,
            threads: BTreeMap::new(),
        }
    }

    /// True when `outputs` holds a speedscope file.
    pub fn wanted(outputs: &[OutputFile]) -> bool {
        outputs.iter().any(|o| o.format == Format::Speedscope)
    }

    fn file(&self, store: &Store) -> File {
        let mut frames: Vec<Frame> = Vec::new();
        let mut frame_index: std::collections::HashMap<Frame, usize> = Default::default();
        // Speedscope frames of each interned frame, outermost first.
        let mut of_frame: Vec<Option<Vec<usize>>> = Vec::new();
        let mut idx = Vec::new();
        let period = 1.0 / self.info.frequency;
        let mut profiles = Vec::new();
        for (&tid, t) in &self.threads {
            let mut samples = Vec::with_capacity(t.runs.len());
            let mut weights = Vec::with_capacity(t.runs.len());
            for &(stack, n) in &t.runs {
                store.stack_frames(stack, &mut idx);
                let mut sample = Vec::new();
                for &f in idx.iter().rev() {
                    let i = f as usize;
                    if of_frame.len() <= i {
                        of_frame.resize(i + 1, None);
                    }
                    let ids = of_frame[i].get_or_insert_with(|| {
                        store
                            .names(f)
                            .iter()
                            .rev()
                            .map(|n| {
                                let frame = Frame {
                                    name: n.label.to_string(),
                                    file: n.file.as_deref().map(str::to_string),
                                };
                                *frame_index.entry(frame.clone()).or_insert_with(|| {
                                    frames.push(frame);
                                    frames.len() - 1
                                })
                            })
                            .collect()
                    });
                    sample.extend_from_slice(ids);
                }
                samples.push(sample);
                weights.push(n as f64 * period);
            }
            let total: f64 = weights.iter().sum();
            profiles.push((
                total,
                Profile {
                    kind: "sampled",
                    name: format!("{} ({tid})", store.thread_name(t.name)),
                    unit: "seconds",
                    start_value: 0.0,
                    end_value: total,
                    samples,
                    weights,
                },
            ));
        }
        let active = profiles
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.0.total_cmp(&b.1.0).then(b.0.cmp(&a.0)))
            .map_or(0, |(i, _)| i);
        File {
            schema: SCHEMA,
            shared: Shared { frames },
            profiles: profiles.into_iter().map(|(_, p)| p).collect(),
            name: format!(
                "{} (pid {}), {} samples",
                self.info.program,
                self.info.pid,
                self.info.mode()
            ),
            active_profile_index: active,
            exporter: format!("profiler {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl Sink for SpeedscopeSink {
    fn on_sample(&mut self, sample: &SampleRef, _store: &Store) {
        let Some(stack) = sample.stack.filter(|_| self.info.counts(sample)) else {
            return;
        };
        let t = self.threads.entry(sample.tid).or_default();
        t.name = sample.thread;
        match t.runs.last_mut() {
            Some((s, n)) if *s == stack && *n < u32::MAX => *n += 1,
            _ => t.runs.push((stack, 1)),
        }
    }

    fn reads_names_per_sample(&self) -> bool {
        false
    }

    fn keeps_stacks(&self) -> bool {
        true
    }

    fn finish(self: Box<Self>, store: &Store) -> SinkReport {
        output::write_format(
            &self.outputs,
            Format::Speedscope,
            || self.file(store),
            write_json,
        )
    }
}

fn write_json(w: &mut dyn Write, file: &File) -> Result<()> {
    serde_json::to_writer(&mut *w, file)?;
    w.write_all(b"\n")?;
    Ok(())
}
