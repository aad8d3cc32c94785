//! The Firefox Profiler's processed format (`*.json.gz`), written by samply's
//! `fxprof-processed-profile` crate: one process, one track per thread (the main thread
//! first), every sample at its time. Frames are the agent's names (the Firefox Profiler
//! has nothing left to symbolicate); inlined functions are frames of their own. An on-CPU
//! sample carries one period of CPU time, a waiting one (`--idle`) none, so the profiler's
//! CPU graph shows when each thread ran.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use fxprof_processed_profile::{
    CategoryColor, CpuDelta, Frame, FrameFlags, FrameInfo, Profile, SamplingInterval, Timestamp,
};

use super::output::{self, Format, OutputFile};
use super::{SampleRef, SessionInfo, Sink, SinkReport};
use crate::pipeline::profile::{StackId, Store};
use crate::types::Tid;

/// A thread's latest name id and its samples (time, stack, on-CPU).
type ThreadSamples = (u32, Vec<(u64, StackId, bool)>);

/// The Firefox Profiler sink.
pub struct FirefoxSink {
    outputs: Arc<Vec<OutputFile>>,
    info: SessionInfo,
    threads: BTreeMap<Tid, ThreadSamples>,
}

impl FirefoxSink {
    /// A sink writing the Firefox Profiler ones of `outputs`.
    pub fn new(outputs: Arc<Vec<OutputFile>>, info: SessionInfo) -> Self {
        FirefoxSink {
            outputs,
            info,
            threads: BTreeMap::new(),
        }
    }

    /// True when `outputs` holds a Firefox Profiler file.
    pub fn wanted(outputs: &[OutputFile]) -> bool {
        outputs.iter().any(|o| o.format == Format::Firefox)
    }

    /// The profile.
    pub fn profile(&self, store: &Store) -> Profile {
        let interval = SamplingInterval::from_nanos(self.info.period_ns());
        let mut profile = Profile::new(
            &format!(
                "{} (pid {}), {} samples",
                self.info.program,
                self.info.pid,
                self.info.mode()
            ),
            self.info.start.into(),
            interval,
        );
        profile.set_product(&format!("profiler {}", env!("CARGO_PKG_VERSION")));
        profile.set_os_name("Linux");
        profile.set_symbolicated(true);
        let native = profile.add_category("Native", CategoryColor::Blue);
        let marker = profile.add_category("Incomplete stack", CategoryColor::Gray);
        let zero = Timestamp::from_nanos_since_reference(0);
        let process = profile.add_process(&self.info.program, self.info.pid as u32, zero);
        let cpu = CpuDelta::from(Duration::from_nanos(self.info.period_ns()));
        let mut idx = Vec::new();
        // The main thread first.
        let mut order: Vec<&Tid> = self.threads.keys().collect();
        order.sort_by_key(|&&t| (t != self.info.pid, t));
        for tid in order {
            let (name, samples) = &self.threads[tid];
            let thread = profile.add_thread(process, *tid as u32, zero, *tid == self.info.pid);
            profile.set_thread_name(thread, store.thread_name(*name));
            let mut samples = samples.clone();
            samples.sort_by_key(|&(t, _, _)| t);
            let mut last_stack = None;
            let mut handle = None;
            for (time, stack, on_cpu) in samples {
                if last_stack != Some(stack) {
                    store.stack_frames(stack, &mut idx);
                    let frames: Vec<FrameInfo> = idx
                        .iter()
                        .rev()
                        .flat_map(|&f| store.names(f).iter().rev())
                        .map(|n| FrameInfo {
                            frame: Frame::Label(profile.intern_string(&n.label)),
                            category_pair: if n.function.is_none() && n.addr == 0 {
                                marker.into()
                            } else {
                                native.into()
                            },
                            flags: FrameFlags::empty(),
                        })
                        .collect();
                    handle = profile.intern_stack_frames(thread, frames.into_iter());
                    last_stack = Some(stack);
                }
                let delta = if on_cpu { cpu } else { CpuDelta::ZERO };
                profile.add_sample(
                    thread,
                    Timestamp::from_nanos_since_reference(time),
                    handle,
                    delta,
                    1,
                );
            }
        }
        profile
    }
}

impl Sink for FirefoxSink {
    fn on_sample(&mut self, sample: &SampleRef, _store: &Store) {
        let Some(stack) = sample.stack.filter(|_| self.info.counts(sample)) else {
            return;
        };
        let t = self.threads.entry(sample.tid).or_default();
        t.0 = sample.thread;
        t.1.push((sample.time_ns, stack, sample.on_cpu));
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
            Format::Firefox,
            || self.profile(store),
            write_gz_json,
        )
    }
}

fn write_gz_json(w: &mut dyn Write, profile: &Profile) -> Result<()> {
    let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
    serde_json::to_writer(&mut gz, profile)?;
    gz.finish()?;
    Ok(())
}
