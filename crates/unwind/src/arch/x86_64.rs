//! x86_64: the registers the unwinder tracks (by DWARF number), the System V ABI's
//! callee-saved set, and the kernel's signal frame layout. Everything the walk needs to
//! know about the machine lives here, so another architecture is a sibling module.

/// x86_64 general purpose registers, indexed by their DWARF register number
/// (0 rax, 1 rdx, 2 rcx, 3 rbx, 4 rsi, 5 rdi, 6 rbp, 7 rsp, 8..=15 r8..r15, 16 return
/// address column = rip).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs(pub [u64; Regs::COUNT]);

impl Regs {
    /// Number of registers kept.
    pub const COUNT: usize = 17;
    /// DWARF number of rbx.
    pub const RBX: u16 = 3;
    /// DWARF number of rbp.
    pub const RBP: u16 = 6;
    /// DWARF number of rsp.
    pub const RSP: u16 = 7;
    /// DWARF number of the return-address column (rip).
    pub const RIP: u16 = 16;

    /// Register by DWARF number, if it is one we keep.
    pub fn get(&self, dwarf_reg: u16) -> Option<u64> {
        self.0.get(dwarf_reg as usize).copied()
    }
    /// Set a register by DWARF number; numbers we do not keep are ignored.
    pub fn set(&mut self, dwarf_reg: u16, value: u64) {
        if let Some(r) = self.0.get_mut(dwarf_reg as usize) {
            *r = value;
        }
    }
    /// Instruction pointer.
    pub fn ip(&self) -> u64 {
        self.0[Self::RIP as usize]
    }
    /// Stack pointer.
    pub fn sp(&self) -> u64 {
        self.0[Self::RSP as usize]
    }
    /// Frame pointer.
    pub fn bp(&self) -> u64 {
        self.0[Self::RBP as usize]
    }
}

/// DWARF numbers of the registers the x86_64 System V ABI preserves across calls
/// (rbx, rbp, r12..r15). Without a rule they keep their value.
pub(crate) const CALLEE_SAVED: [u16; 6] = [3, 6, 12, 13, 14, 15];

/// `struct ucontext` offset of `uc_mcontext.gregs` on x86_64 (after uc_flags, uc_link and
/// the 24-byte `stack_t`).
pub const UC_MCONTEXT_GREGS: u64 = 40;

/// DWARF numbers of `gregs[0..17]` in x86_64 `struct sigcontext` order: r8..r15, rdi,
/// rsi, rbp, rbx, rdx, rax, rcx, rsp, rip.
pub const SIGCONTEXT_ORDER: [u16; 17] = [8, 9, 10, 11, 12, 13, 14, 15, 5, 4, 6, 3, 1, 0, 2, 7, 16];

/// `mov $0xf,%rax; syscall`: the body of `__restore_rt` (rt_sigreturn).
pub(crate) const SIGRETURN_CODE: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
