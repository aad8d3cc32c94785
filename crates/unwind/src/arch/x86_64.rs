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

/// Bytes of code read before the pc to recognise a clone child ([`clone_child_start`]).
pub(crate) const CLONE_BACK: usize = 16;
/// Bytes of code read in all, from `pc - CLONE_BACK`.
pub(crate) const CLONE_WINDOW: usize = 32;

/// The first instructions of a new thread: glibc's `clone` and `clone3` return in the child
/// into `syscall; test %rax,%rax; jl <error>; je <thread_start>; ret`, code that no CFI
/// (or the parent's CFI) describes, on a stack that holds nothing yet; `thread_start` then
/// marks the return address undefined. `code` holds the bytes from `pc - CLONE_BACK`.
/// When the pc is at the `test`, the `jl` or the `je` of that sequence, returns where
/// `je` goes (relative to the pc), for the caller to check that its CFI ends the stack.
pub(crate) fn clone_child_start(code: &[u8; CLONE_WINDOW]) -> Option<i64> {
    const SYSCALL: [u8; 2] = [0x0f, 0x05];
    const TEST_RAX: [u8; 3] = [0x48, 0x85, 0xc0];
    // A conditional jump at `at`: (length, displacement), rel8 or rel32 form.
    let jump = |at: usize, short: u8, long: u8| -> Option<(usize, i64)> {
        match *code.get(at)? {
            b if b == short => Some((2, i64::from(*code.get(at + 1)? as i8))),
            0x0f if *code.get(at + 1)? == long => {
                let d = code.get(at + 2..at + 6)?;
                Some((6, i64::from(i32::from_le_bytes([d[0], d[1], d[2], d[3]]))))
            }
            _ => None,
        }
    };
    // The pc may be 2 (at the test), 5 (at jl) or 7 / 11 (at je) bytes past the syscall.
    for back in [2usize, 5, 7, 11] {
        let s = CLONE_BACK - back;
        if code[s..s + 2] != SYSCALL || code[s + 2..s + 5] != TEST_RAX {
            continue;
        }
        let Some((jl_len, _)) = jump(s + 5, 0x7c, 0x8c) else {
            continue;
        };
        let je_at = s + 5 + jl_len;
        let Some((je_len, disp)) = jump(je_at, 0x74, 0x84) else {
            continue;
        };
        if ![s + 2, s + 5, je_at].contains(&CLONE_BACK) {
            continue;
        }
        let target = (je_at + je_len) as i64 + disp;
        return Some(target - CLONE_BACK as i64);
    }
    None
}

#[cfg(test)]
mod clone_tests {
    use super::*;

    /// glibc 2.36's `clone3` (and `clone`): syscall; test; jl +0x18; je +1; ret.
    fn window(pc_at: usize) -> [u8; CLONE_WINDOW] {
        let code = [
            0x0f, 0x05, 0x48, 0x85, 0xc0, 0x7c, 0x18, 0x74, 0x01, 0xc3, 0x31, 0xed,
        ];
        let mut w = [0x90u8; CLONE_WINDOW];
        let start = CLONE_BACK - pc_at;
        w[start..start + code.len()].copy_from_slice(&code);
        w
    }

    #[test]
    fn recognises_the_child_side_of_clone() {
        // pc at the test (2 past the syscall), at jl (5), at je (7): thread_start is at
        // syscall + 10.
        for at in [2usize, 5, 7] {
            assert_eq!(
                clone_child_start(&window(at)),
                Some(10 - at as i64),
                "pc at +{at}"
            );
        }
        // At the syscall itself or at the ret: not the child's first instructions.
        assert_eq!(clone_child_start(&window(0)), None);
        assert_eq!(clone_child_start(&window(9)), None);
        // rel32 forms.
        let mut w = [0x90u8; CLONE_WINDOW];
        let code = [
            0x0f, 0x05, 0x48, 0x85, 0xc0, 0x0f, 0x8c, 0x10, 0, 0, 0, 0x0f, 0x84, 0x01, 0, 0, 0,
        ];
        w[CLONE_BACK - 2..CLONE_BACK - 2 + code.len()].copy_from_slice(&code);
        assert_eq!(clone_child_start(&w), Some(17 + 1 - 2));
        // Another system call followed by something else.
        let mut w = [0x90u8; CLONE_WINDOW];
        w[CLONE_BACK - 2..CLONE_BACK + 3].copy_from_slice(&[0x0f, 0x05, 0x48, 0x89, 0xc3]);
        assert_eq!(clone_child_start(&w), None);
    }
}
