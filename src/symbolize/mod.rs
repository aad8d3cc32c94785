//! Naming addresses: function, file and line with inlined frames (addr2line), falling back
//! to `.symtab` then `.dynsym`; separate debug files found by build-id and
//! `.gnu_debuglink`; C++ and Rust demangling. Reads ELF files by path; never reads target
//! memory.
//!
//! OWNER: symbolizer helper. The public items below are the contract with the rest of the
//! crate; their bodies are to be written.

use std::path::PathBuf;

use crate::bytes::Bytes;

/// One module (ELF file) to symbolize addresses in.
#[derive(Clone, Debug)]
pub struct ModuleDesc {
    /// The path as the target sees it (as in /proc/PID/maps), e.g. `/usr/lib/libc.so.6`.
    pub path: String,
    /// The file contents (opened through /proc/PID/root or map_files by the caller).
    pub data: Bytes,
    /// The GNU build-id, when the file has one.
    pub build_id: Option<Vec<u8>>,
    /// The target's root directory (`/proc/PID/root`), searched first for debug files.
    pub root: PathBuf,
}

/// One named frame; an address inside inlined code yields several, innermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SymFrame {
    /// Demangled function name.
    pub function: Option<String>,
    /// Source file path.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
    /// True for a frame that was inlined into the next one in the list.
    pub inlined: bool,
}

/// Names addresses; caches parsed files by identity.
pub struct Symbolizer {
    _debug_dirs: Vec<PathBuf>,
}

impl Symbolizer {
    /// A symbolizer that also searches `debug_dirs` (besides `/usr/lib/debug`) for debug
    /// files.
    pub fn new(debug_dirs: Vec<PathBuf>) -> Self {
        Symbolizer {
            _debug_dirs: debug_dirs,
        }
    }

    /// Name `svma` (a file address: the looked-up address minus the module's bias) in
    /// `module`, innermost frame first. Empty when nothing names it.
    pub fn symbolize(&mut self, _module: &ModuleDesc, _svma: u64) -> Vec<SymFrame> {
        unimplemented!()
    }
}
