//! `profiler`: a sampling profiler agent for running Linux processes.
//!
//! Pipeline: the sampler stops each thread just long enough to read its registers and copy
//! its stack (`os`, `sampler`); the processor unwinds those copies (`unwind`) against the
//! target's modules (`modules`), names the frames (`symbolize`) and aggregates them
//! (`profile`); outputs are folded stacks and flame graphs (`output`) and Sentry profile
//! chunks (`sentry`). Only `os` talks to the kernel.

pub mod app;
pub mod chunks;
pub mod cli;
pub mod doctor;
pub mod elf;
pub mod modules;
pub mod os;
pub mod output;
pub mod processor;
pub mod procmaps;
pub mod profile;
pub mod sampler;
pub mod sink;
pub mod types;

pub use profiler_sentry as sentry_format;
pub use profiler_symbolize as symbolize;
pub use profiler_unwind as unwind;

/// Write `text` to stderr, ignoring a stderr that went away (a closed pipe): a message must
/// never make the agent fail, least of all while it holds a target traced.
pub fn to_stderr(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
