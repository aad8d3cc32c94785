//! Walks that reuse the outer part of the previous walk of the same stack.
//!
//! A thread deep in a recursion is sampled again and again with the same outer frames: the
//! walk from its leaf soon reaches a frame it reached last time, with the same registers,
//! over the same stack bytes, and from there on it can only find the same callers again.
//! [`WalkMemo`] keeps, for one thread, the frames of its last walk and the register state
//! at a few of them (the first frame of every [`MARK_SPACING`] bytes of stack, so two walks
//! over the same outer stack mark the same frames). The next walk checks its state at those
//! marks; at the first one equal to the previous walk's, it copies the previous walk's
//! frames from there on instead of stepping through them.
//!
//! The copy is only right when the stack memory the rest of the walk reads is what the
//! previous walk read. The caller says from which address up that holds (`same_from`:
//! for example, both stacks share that part byte for byte); a mark is used only when its
//! stack pointer is at or above it (every later step reads at or above its own frame's
//! stack pointer), and the module list must not have changed ([`WalkMemo::clear`]).

use crate::{FrameAddr, Regs, StackEnd};

/// Stack bytes between two marks: a 2 MiB stack gets 128 of them.
pub const MARK_SPACING: u64 = 16 * 1024;

/// The state of a walk at one frame: enough to go on from there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Index of the frame in the walk's frames.
    pub index: usize,
    pub frame: FrameAddr,
    /// Registers, the unknown ones zeroed.
    pub regs: Regs,
    /// Which registers are known.
    pub valid: u32,
}

impl Mark {
    pub fn new(index: usize, frame: FrameAddr, regs: &Regs, valid: u32) -> Mark {
        let mut known = *regs;
        for (i, r) in known.0.iter_mut().enumerate() {
            if valid & (1 << i) == 0 {
                *r = 0;
            }
        }
        Mark {
            index,
            frame,
            regs: known,
            valid,
        }
    }

    fn same_state(&self, other: &Mark) -> bool {
        self.frame == other.frame && self.valid == other.valid && self.regs == other.regs
    }

    pub fn sp(&self) -> u64 {
        self.regs.sp()
    }
}

/// One thread's last walk (see the module's text).
#[derive(Clone, Debug, Default)]
pub struct WalkMemo {
    pub(crate) frames: Vec<FrameAddr>,
    pub(crate) marks: Vec<Mark>,
    pub(crate) end: Option<StackEnd>,
    /// Marks of the walk under way.
    pub(crate) next_marks: Vec<Mark>,
}

impl WalkMemo {
    /// Nothing remembered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget the last walk (the modules changed, or the thread's stack is another one).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.marks.clear();
        self.end = None;
    }

    /// The previous walk's mark with the same state as `mark`, if any: searched among the
    /// marks at or after `*cursor` (marks go outward, by growing stack pointer).
    pub(crate) fn find(&self, mark: &Mark, cursor: &mut usize) -> Option<Mark> {
        self.end?;
        while *cursor < self.marks.len() && self.marks[*cursor].sp() < mark.sp() {
            *cursor += 1;
        }
        self.marks
            .get(*cursor)
            .filter(|m| m.same_state(mark))
            .copied()
    }
}
