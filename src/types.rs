//! Process and thread ids. Registers, frame addresses and stack ends come from the
//! unwinder crate.

/// A process id as the agent sees it (its own PID namespace).
pub type Pid = i32;
/// A kernel thread id.
pub type Tid = i32;

pub use profiler_unwind::{FrameAddr, Regs, StackEnd};
