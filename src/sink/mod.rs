//! Where profiles go. Every output is a [`Sink`]: it sees each sample once, in order,
//! with a read-only view of the [`Store`] (frames with their names, threads, modules),
//! and writes out at the end of a session. Sinks never reach back into the pipeline; a
//! new output is a new sink, and no stage changes for it.
//!
//! - [`folded`]: folded stacks (`*.folded`, `-`) and flame graphs (`*.svg`).
//! - [`speedscope`]: speedscope's file format (`*.speedscope.json`).
//! - [`pprof`]: pprof's `profile.proto` (`*.pb.gz`).
//! - [`firefox`]: the Firefox Profiler's processed format (`*.json.gz`).
//! - [`top`]: the live table of `profiler top`.
//! - [`sentry`]: Sentry continuous-profiling chunks, sent to a DSN or written as
//!   envelopes.
//!
//! Local outputs count on-CPU samples only, unless the session includes waiting threads
//! ([`SessionInfo::idle`]); Sentry chunks take every sample (wall-clock).

pub mod firefox;
pub mod folded;
pub mod outpath;
pub mod output;
pub mod pprof;
pub mod sentry;
pub mod speedscope;
pub mod top;

use std::path::PathBuf;
use std::time::SystemTime;

use crate::pipeline::profile::{StackId, Store};
use crate::types::{Pid, StackEnd, Tid};

/// What local outputs say about the session they come from.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// The target's name (`comm`).
    pub program: String,
    /// The target's pid.
    pub pid: Pid,
    /// Samples per second per thread asked for.
    pub frequency: f64,
    /// True when waiting threads count too (wall-clock, `--idle`); false for on-CPU
    /// samples only.
    pub idle: bool,
    /// When the session started (wall clock).
    pub start: SystemTime,
}

impl SessionInfo {
    /// True when a local output counts this sample.
    pub fn counts(&self, sample: &SampleRef) -> bool {
        self.idle || sample.on_cpu
    }

    /// "on-CPU" or "wall-clock": what the counts of local outputs mean.
    pub fn mode(&self) -> &'static str {
        if self.idle { "wall-clock" } else { "on-CPU" }
    }

    /// Nanoseconds between two samples of one thread.
    pub fn period_ns(&self) -> u64 {
        (1e9 / self.frequency.max(1e-3)) as u64
    }
}

/// The span of a session as its samples show it: from the first sample's time to the
/// last one's, plus one period. Sinks see every sample (counted or not), so this is the
/// session's length however few samples count.
#[derive(Clone, Copy, Debug, Default)]
pub struct Span {
    first: Option<u64>,
    last: u64,
}

impl Span {
    /// Take a sample's time into account.
    pub fn see(&mut self, time_ns: u64) {
        self.first = Some(self.first.map_or(time_ns, |f| f.min(time_ns)));
        self.last = self.last.max(time_ns);
    }

    /// Seconds covered, one period included; 0 before any sample.
    pub fn seconds(&self, period_ns: u64) -> f64 {
        match self.first {
            Some(f) => (self.last - f + period_ns) as f64 / 1e9,
            None => 0.0,
        }
    }
}

/// One sample as the sinks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleRef {
    /// Thread.
    pub tid: Tid,
    /// The id of the thread name it counts under ([`Store::thread_name`]).
    pub thread: u32,
    /// Nanoseconds since the session's start.
    pub time_ns: u64,
    /// Its stack ([`Store::stack_frames`]), None when empty.
    pub stack: Option<StackId>,
    /// How the stack ended.
    pub end: StackEnd,
    /// True when the thread was running or ready to run (on-CPU), false when it waited.
    /// Local outputs count on-CPU samples only unless `--idle` is given; Sentry chunks
    /// take every sample (wall-clock).
    pub on_cpu: bool,
}

/// What a sink did, for the closing summary.
#[derive(Debug, Default)]
pub struct SinkReport {
    /// Lines for the summary.
    pub lines: Vec<String>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Outputs that could not be written, with the reason: the run then fails.
    pub failures: Vec<String>,
}

/// An output of profiles.
pub trait Sink: Send {
    /// Called for every sample, in the order the samples arrive.
    fn on_sample(&mut self, sample: &SampleRef, store: &Store);

    /// True when the sink reads frame names in `on_sample` or `tick` (then every frame is
    /// named as soon as it is seen); false when it reads them only in `finish`.
    fn reads_names_per_sample(&self) -> bool {
        true
    }

    /// True when the sink holds stack ids until it finishes (the store must then never
    /// forget its interned stacks).
    fn keeps_stacks(&self) -> bool {
        false
    }

    /// The store forgot its interned frames and stacks: ids seen before are invalid.
    fn on_reset(&mut self) {}

    /// Called often (between samples, and every few milliseconds when none arrive): a
    /// sink that shows something live draws it here.
    fn tick(&mut self, _store: &Store) {}

    /// A few words on what the sink did so far, for the status line (`3 chunks sent`).
    fn status(&self) -> Option<String> {
        None
    }

    /// The session is over: write out.
    fn finish(self: Box<Self>, store: &Store) -> SinkReport;
}
