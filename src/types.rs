//! Plain data shared by every stage: process and thread ids, captured registers and frame
//! addresses. Nothing here touches the operating system.

/// A process id as the agent sees it (its own PID namespace).
pub type Pid = i32;
/// A kernel thread id.
pub type Tid = i32;

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

/// One frame of an unwound stack, as an absolute address in the target (AVMA).
///
/// The first frame of a stack is the exact instruction pointer; the frames of callers are
/// raw return addresses, which must be looked up at `addr - 1` to land inside the call
/// instruction. A frame interrupted by a signal is again an exact instruction pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameAddr {
    /// The absolute address.
    pub addr: u64,
    /// True when `addr` is a return address (a caller's frame).
    pub is_return: bool,
}

impl FrameAddr {
    /// An exact instruction pointer.
    pub fn ip(addr: u64) -> Self {
        FrameAddr {
            addr,
            is_return: false,
        }
    }
    /// A return address.
    pub fn ret(addr: u64) -> Self {
        FrameAddr {
            addr,
            is_return: true,
        }
    }
    /// The address to look up in unwind and debug info: inside the call for return
    /// addresses.
    pub fn lookup_addr(&self) -> u64 {
        if self.is_return {
            self.addr.saturating_sub(1)
        } else {
            self.addr
        }
    }
}

/// How an unwind ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StackEnd {
    /// Reached the thread's root (`_start`, `clone`, `clone3`, `start_thread`): complete.
    Root,
    /// The next frame lies beyond the captured stack bytes.
    Truncated,
    /// An address no module and no frame pointer could explain.
    Unknown,
    /// Stopped at the frame limit.
    MaxDepth,
}

impl StackEnd {
    /// True when the stack is known to be complete.
    pub fn is_complete(self) -> bool {
        matches!(self, StackEnd::Root)
    }
}
