//! Every contact with the kernel: ptrace, `perf_event_open`, `process_vm_readv`, `/proc` and
//! signals. The rest of the crate works on the plain data these functions return. `unsafe`
//! lives here only, each block with a `// SAFETY:` note.

pub mod demangle;
pub mod files;
pub mod launch;
pub mod perf;
pub mod permissions;
pub mod proc;
pub mod ptrace;
pub mod signals;
pub mod term;
pub mod vm;
