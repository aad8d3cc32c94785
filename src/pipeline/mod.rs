//! The stages between a stack source and the sinks:
//!
//! ```text
//! source ──SourceEvent──▶ unwind ──Unwound──▶ name + store ──SampleRef──▶ sinks
//! (sampler thread)        (unwinder thread)   (session thread)
//! ```
//!
//! Events travel between the threads in batches, one per round of the source (a large
//! round in a few), and a stage with nothing to do sleeps until the next batch: each stage
//! wakes about once per round (the naming stage also every 50 ms when idle, for the
//! sinks' ticks).
//!
//! [`unwind`] keeps the target's module map and turns captured registers and stack bytes
//! into frame keys; [`naming`] owns the symbolizer and names each unique frame once, as it
//! is first seen, into the one frame vocabulary ([`NamedFrame`]); [`profile`] interns
//! frames and stacks and keeps per-thread facts. Sinks see a read-only [`profile::Store`].
//! Each stage only receives from the one before it.

pub mod naming;
pub mod profile;
pub mod unwind;

use std::sync::Arc;

use crate::modules::Module;
use crate::types::{StackEnd, Tid};

pub use naming::{FrameKind, NamedFrame};

/// Batches of results from the unwind stage to the naming stage (one per batch of
/// source events).
pub type UnwoundSender = flume::Sender<Vec<Unwound>>;
/// ...and where the naming stage takes them.
pub type UnwoundReceiver = flume::Receiver<Vec<Unwound>>;

/// Module id of frames that lie in no known module (JIT code, unmapped addresses).
pub const NO_MODULE: u32 = u32::MAX;

/// Module id of Python frames: their [`FrameKey::addr`] is the code id (see
/// [`Unwound::PyCode`]) in the high 32 bits and the line (0: none) in the low ones.
pub const PY_MODULE: u32 = u32::MAX - 2;

/// A frame before naming: where the address lies and what kind of address it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameKey {
    /// Module id (see [`crate::modules::ModuleMap`]) or [`NO_MODULE`].
    pub module: u32,
    /// Absolute address in the target.
    pub addr: u64,
    /// A return address (looked up at `addr - 1`) rather than an exact pc.
    pub is_return: bool,
}

impl FrameKey {
    /// The address to look up in debug info: inside the call for return addresses.
    pub fn lookup_addr(&self) -> u64 {
        if self.is_return {
            self.addr.saturating_sub(1)
        } else {
            self.addr
        }
    }
}

/// An unwound stack: frame keys leaf first, and how the walk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnwoundStack {
    /// Frames, leaf first.
    pub frames: Vec<FrameKey>,
    /// How the walk ended.
    pub end: StackEnd,
}

/// What the unwind stage passes on, in the order of the source's events.
#[derive(Debug)]
pub enum Unwound {
    /// A module seen for the first time (ids are never reused in a session).
    Module(Arc<Module>),
    /// A thread's stack at a time.
    Sample {
        /// Thread.
        tid: Tid,
        /// Nanoseconds since the session's start.
        time_ns: u64,
        /// Running or ready to run (see [`crate::source::RawSample::on_cpu`]).
        on_cpu: bool,
        /// Its stack.
        stack: UnwoundStack,
    },
    /// Threads that did not run since their last samples: the same stacks again.
    Repeat {
        /// Threads.
        tids: Vec<Tid>,
        /// Nanoseconds since the session's start.
        time_ns: u64,
        /// Running or ready to run.
        on_cpu: bool,
    },
    /// A thread's name.
    ThreadName {
        /// Thread.
        tid: Tid,
        /// Name.
        name: String,
    },
    /// A thread exited.
    ThreadExited(Tid),
    /// A Python code object seen for the first time (ids are never reused in a session).
    PyCode {
        /// Its id, as in the frame keys of Python frames.
        id: u32,
        /// What names it.
        info: Arc<crate::python::PyCodeInfo>,
    },
}

impl FrameKey {
    /// The key of a Python frame: code `id` at `line`.
    pub fn python(id: u32, line: Option<u32>) -> FrameKey {
        FrameKey {
            module: PY_MODULE,
            addr: ((id as u64) << 32) | line.unwrap_or(0) as u64,
            is_return: false,
        }
    }

    /// For a Python frame, its code id and line.
    pub fn as_python(&self) -> Option<(u32, Option<u32>)> {
        (self.module == PY_MODULE).then(|| {
            (
                (self.addr >> 32) as u32,
                Some(self.addr as u32).filter(|&l| l > 0),
            )
        })
    }
}
