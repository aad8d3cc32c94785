//! `profiler`: a sampling profiler agent for running Linux processes.
//!
//! ```text
//! source ─▶ unwind ─▶ name + store ─▶ sinks
//! ```
//!
//! A stack source (`source`; the ptrace sampler) emits neutral samples: registers and
//! stack bytes per thread. The unwind stage (`pipeline::unwind`, over the
//! `profiler-unwind` crate) keeps the target's modules (`modules`) and walks each stack;
//! the naming stage (`pipeline::naming`, over `profiler-symbolize`) names each unique
//! frame once into the store (`pipeline::profile`); sinks (`sink`) write folded stacks,
//! flame graphs and Sentry chunks (`profiler-sentry`). `session` wires one session,
//! `config` checks the command line, `summary` prints the end. Only `os` talks to the
//! kernel.

pub mod cli;
pub mod config;
pub mod doctor;
pub mod dump;
pub mod elf;
pub mod modules;
pub mod os;
pub mod perfmap;
pub mod pipeline;
pub mod procmaps;
pub mod progress;
pub mod python;
pub mod record;
pub mod session;
pub mod sink;
pub mod source;
pub mod summary;
pub mod target;
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
