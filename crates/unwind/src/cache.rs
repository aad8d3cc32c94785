//! A fixed-size, direct-mapped cache of frame rules keyed by (module id, frame address,
//! exactness). Allocated once per `Unwinder`; a repeated address costs one probe.

use super::rule::CfiRule;

/// How to unwind one frame, as cached. Slots are fixed-size on purpose (no
/// allocation), so the size difference between variants is accepted.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameRule {
    /// Apply this CFI rule.
    Cfi(CfiRule),
    /// The pc is the rt_sigreturn trampoline without CFI: registers come from the
    /// `ucontext_t` at the stack pointer.
    SigReturn,
    /// No CFI covers the address.
    NoCfi,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    addr: u64,
    module: u32,
    is_return: bool,
    rule: FrameRule,
}

/// Number of slots (a power of two).
pub(crate) const CACHE_SLOTS: usize = 4096;

/// The rule cache.
pub(crate) struct RuleCache {
    slots: Box<[Option<Entry>]>,
}

impl RuleCache {
    /// An empty cache.
    pub fn new() -> Self {
        RuleCache {
            slots: vec![None; CACHE_SLOTS].into_boxed_slice(),
        }
    }

    fn slot(addr: u64, module: u32, is_return: bool) -> usize {
        let h = (addr ^ (u64::from(module) << 40) ^ u64::from(is_return))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> (64 - CACHE_SLOTS.trailing_zeros())) as usize
    }

    /// The cached rule, if any.
    pub fn get(&self, addr: u64, module: u32, is_return: bool) -> Option<&FrameRule> {
        match &self.slots[Self::slot(addr, module, is_return)] {
            Some(e) if e.addr == addr && e.module == module && e.is_return == is_return => {
                Some(&e.rule)
            }
            _ => None,
        }
    }

    /// Remember a rule, replacing whatever shared its slot, and return it.
    pub fn insert(
        &mut self,
        addr: u64,
        module: u32,
        is_return: bool,
        rule: FrameRule,
    ) -> &FrameRule {
        let slot = &mut self.slots[Self::slot(addr, module, is_return)];
        &slot
            .insert(Entry {
                addr,
                module,
                is_return,
                rule,
            })
            .rule
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stay_small() {
        // 4096 slots of this size are allocated once per unwinder.
        let slot = std::mem::size_of::<Option<Entry>>();
        assert!(slot <= 256, "{slot} bytes per slot");
    }
}
