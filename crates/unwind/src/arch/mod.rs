//! Machine-specific facts, one module per architecture. Only x86_64 exists today; an
//! aarch64 module would give the same names (`Regs`, the callee-saved set, the signal
//! frame layout).

pub mod x86_64;

pub use self::x86_64::Regs;
pub(crate) use self::x86_64::{
    CALLEE_SAVED, CLONE_BACK, CLONE_WINDOW, SIGCONTEXT_ORDER, SIGRETURN_CODE, UC_MCONTEXT_GREGS,
    clone_child_start,
};
