//! CPython: Python functions in the profile, merged with the native frames of the
//! interpreter that runs them. Pure logic over bytes and a memory-reader trait
//! ([`ReadMemory`]); only `os` reads the target.
//!
//! * [`detect`]: is the target CPython (its executable or a `libpython3.X.so`), which
//!   version, where `_PyRuntime` and `_PyEval_EvalFrameDefault` are (ELF symbol tables).
//! * [`layout`]: struct offsets per version (a table for 3.9–3.12, `_Py_DebugOffsets` for
//!   3.13).
//! * [`walk`]: the interpreter's thread states (Python thread → kernel thread) and each
//!   thread's frame chain, read as code-object addresses and instruction offsets only, so
//!   the ptrace source can read them inside the same stop as the native stack.
//! * [`code`]: code objects resolved outside the stop (name, file, first line, line table),
//!   cached by address with a guard against reuse.
//! * [`linetable`]: the three line-table formats.
//! * [`merge`]: each eval-loop native frame replaced by the Python frames it ran.
//! * [`names`]: module names, short file names and `in_app` the way sentry-python writes
//!   them.

pub mod code;
pub mod detect;
pub mod layout;
pub mod linetable;
pub mod merge;
pub mod names;
pub mod walk;

pub use profiler_unwind::memory::ReadMemory;

/// Most Python frames read per thread and sample (a 1,000-frame recursion is read whole).
pub const MAX_PY_FRAMES: usize = 4096;

/// One Python frame as read in the stop: the code object's address and the offset (bytes)
/// of the instruction it executes, and whether the eval loop was entered (from C) at this
/// frame: the frames of one eval-loop call run from an entry frame (included) towards the
/// leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyRawFrame {
    /// Address of the code object; 0 for an entry marker with no Python frame of its own
    /// (an eval-loop call that has not pushed its first frame yet, 3.12+).
    pub code: u64,
    /// Byte offset of the instruction in the bytecode; negative before the first one.
    pub instr: i32,
    /// The eval loop was entered at this frame (the outermost frame of its call).
    pub entry: bool,
}

/// A thread's Python frames as read in the stop, leaf first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PyRawStack {
    /// Frames, leaf first.
    pub frames: Vec<PyRawFrame>,
    /// False when the walk stopped early (a pointer that could not be read, the depth
    /// bound).
    pub complete: bool,
}

/// A resolved code object: what names a Python frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PyCodeInfo {
    /// `co_qualname` (3.11+) or `co_name`.
    pub function: String,
    /// `co_filename` as the interpreter has it (absolute for files imported by path).
    pub filename: String,
    /// `co_firstlineno`.
    pub first_line: u32,
}

/// What the agent knows of a CPython target once detected.
#[derive(Clone, Debug)]
pub struct PythonTarget {
    /// Version.
    pub version: layout::Version,
    /// Offsets.
    pub layout: layout::Layout,
    /// Address of `_PyRuntime` in the target.
    pub runtime: u64,
    /// Address of `PyCode_Type` (to check that a code object is one), when exported.
    pub code_type: Option<u64>,
    /// Path of the file holding the interpreter (executable or libpython), as in the maps.
    pub interpreter_path: String,
    /// Address ranges of `_PyEval_EvalFrameDefault` (and its cold parts) in the target.
    pub eval_ranges: Vec<(u64, u64)>,
    /// Address range of the interpreter's code in the target (its executable mappings):
    /// the frames hidden without `--python-internals`.
    pub interpreter_ranges: Vec<(u64, u64)>,
}

impl PythonTarget {
    /// True when `addr` (a pc, or a return address minus one) is in the eval loop.
    pub fn is_eval(&self, addr: u64) -> bool {
        self.eval_ranges.iter().any(|&(a, b)| addr >= a && addr < b)
    }

    /// True when `addr` is in the interpreter's own code.
    pub fn is_interpreter(&self, addr: u64) -> bool {
        self.interpreter_ranges
            .iter()
            .any(|&(a, b)| addr >= a && addr < b)
    }
}
