//! Where profiles go. Every output is a [`Sink`]: it sees each sample once, in order,
//! with a read-only view of the [`Store`] (frames with their names, threads, modules),
//! and writes out at the end of a session. Sinks never reach back into the pipeline; a
//! new output is a new sink, and no stage changes for it.
//!
//! - [`folded`]: folded stacks (`*.folded`) and flame graphs (`*.svg`).
//! - [`sentry`]: Sentry continuous-profiling chunks, sent to a DSN or written as
//!   envelopes.

pub mod folded;
pub mod outpath;
pub mod sentry;

use std::path::PathBuf;

use crate::pipeline::profile::{StackId, Store};
use crate::types::{StackEnd, Tid};

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

    /// True when the sink holds stack ids until it finishes (the store must then never
    /// forget its interned stacks).
    fn keeps_stacks(&self) -> bool {
        false
    }

    /// The store forgot its interned frames and stacks: ids seen before are invalid.
    fn on_reset(&mut self) {}

    /// The session is over: write out.
    fn finish(self: Box<Self>, store: &Store) -> SinkReport;
}
