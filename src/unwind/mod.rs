//! Stack unwinding over captured registers and memory: DWARF CFI (`.eh_frame` through
//! `.eh_frame_hdr`, `.debug_frame`) through gimli, frame pointers where no CFI covers an
//! address. Pure code: it never opens a file or touches a process.
//!
//! OWNER: unwinder helper. The public items below are the contract with the rest of the
//! crate; their bodies are to be written.

use crate::bytes::Bytes;
use crate::memory::ReadMemory;
use crate::types::{FrameAddr, Regs, StackEnd};

/// Unwind tables of one ELF image, built from its bytes.
#[derive(Debug)]
pub struct UnwindInfo {
    _private: (),
}

impl UnwindInfo {
    /// Parse the unwind sections of an ELF image (file bytes, or an image read from memory
    /// such as the vDSO). A corrupt or missing section yields an info with fewer tables,
    /// not an error, unless the bytes are not an ELF file at all.
    pub fn from_elf(_elf: Bytes) -> Result<UnwindInfo, String> {
        unimplemented!()
    }

    /// Add `.debug_frame` from a separate debug file for addresses `.eh_frame` does not
    /// cover.
    pub fn add_debug_file(&mut self, _debug_elf: Bytes) {
        unimplemented!()
    }
}

/// A module that covers an address, as given to the unwinder.
#[derive(Clone, Copy, Debug)]
pub struct ModuleRef<'a> {
    /// Its unwind tables.
    pub info: &'a UnwindInfo,
    /// `avma - svma`: add to a file address to get the address in the process.
    pub bias: u64,
    /// A number unique to this module for the life of the process's module map
    /// (a new mapping at the same address gets a new id), for caching rules.
    pub id: u32,
}

/// Finds the module covering an absolute address.
pub trait UnwindModules {
    /// The module mapped executable at `avma`, if any.
    fn find(&self, avma: u64) -> Option<ModuleRef<'_>>;
}

/// Walks stacks; owns caches and scratch space reused across calls.
pub struct Unwinder {
    _max_frames: usize,
}

impl Unwinder {
    /// An unwinder that stops after `max_frames` frames.
    pub fn new(max_frames: usize) -> Self {
        Unwinder {
            _max_frames: max_frames,
        }
    }

    /// Unwind from `regs`, pushing frames (leaf first) into `out` (cleared first), and
    /// report how the walk ended.
    pub fn unwind<M: ReadMemory, U: UnwindModules>(
        &mut self,
        _regs: &Regs,
        _mem: &M,
        _modules: &U,
        _out: &mut Vec<FrameAddr>,
    ) -> StackEnd {
        unimplemented!()
    }
}
