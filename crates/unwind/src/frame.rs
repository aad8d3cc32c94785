//! What a walk yields: frame addresses and how the walk ended.

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
