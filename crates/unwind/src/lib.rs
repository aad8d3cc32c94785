#![doc = include_str!("../README.md")]
//!
//! ## Address vocabulary
//!
//! - **AVMA** (actual virtual memory address): an address in the target process, as found
//!   in registers, on the stack and in [`FrameAddr`]s.
//! - **SVMA** (stated virtual memory address): an address as the ELF file states it
//!   (`p_vaddr`, `sh_addr`, FDE ranges). For a PIE or shared object the first `PT_LOAD`
//!   usually states 0; for a non-PIE executable the SVMAs equal the AVMAs.
//! - **bias** = AVMA − SVMA of a module ([`ModuleRef::bias`]), the same for every
//!   segment of one mapping. The unwinder looks a frame up at
//!   `svma = frame.lookup_addr() - bias`; `DW_OP_addr` operands are relocated by `+ bias`.
//!
//! Inside one image, `.eh_frame` pointers encoded `DW_EH_PE_pcrel` are relative to the
//! SVMA of the byte being read, so the section addresses (`sh_addr`, not file offsets)
//! are handed to gimli's `BaseAddresses` together with `.text` and `.got`.
//!
//! ## The walk
//!
//! Frame 0 is the exact instruction pointer; every caller is a return address looked up
//! at `addr - 1`, except a frame interrupted by a signal, which is exact again. For each
//! frame the unwinder finds the module, the CFI row for the address (cached as a compact
//! [`Copy`] rule keyed by module id and address) and computes the caller's registers:
//! CFA (`reg + offset` or an expression), the return address and every register with a
//! rule (callee-saved ones default to "same value"). Without CFI it recognises the
//! `rt_sigreturn` trampoline by its code bytes, tries the return address at `[rsp]` for
//! an exact pc (a frameless stub), steps through JIT trampolines that adjust the stack
//! once before their call (`sub $n,%rsp; call`, CPython's perf trampolines: code read
//! through [`UnwindModules::read_code`]), and finally follows the frame pointer chain.
//!
//! The walk ends with [`StackEnd::Root`] at a return address the CFI marks undefined
//! (`_start`, the child side of `clone`/`clone3`), at the first instructions of a clone
//! child (right after the system call returned 0, before its CFI says so: recognised by
//! glibc's code and the CFI of the code it jumps to), at a return address of 0, or at a null
//! frame pointer inside a known module; [`StackEnd::Truncated`] when a needed read falls
//! outside the captured memory; [`StackEnd::Unknown`] when nothing explains the next
//! frame (or the stack pointer would not grow); [`StackEnd::MaxDepth`] at the frame
//! limit.

pub mod arch;
mod cache;
mod eval;
mod frame;
mod info;
pub mod memo;
pub mod memory;
mod rule;
#[cfg(test)]
mod tests;

use gimli::UnwindContext;

use self::arch::{CALLEE_SAVED, SIGCONTEXT_ORDER, UC_MCONTEXT_GREGS};
use self::cache::{FrameRule, RuleCache};
use self::eval::{EvalError, EvalRegs};
use self::info::Found;
use self::rule::{CfaRule, CfiRule, ExprRef, NREGS, RegRule};

pub use self::arch::Regs;
pub use self::frame::{FrameAddr, StackEnd};
pub use self::info::UnwindInfo;
pub use self::memo::WalkMemo;
use self::memo::{MARK_SPACING, Mark};
pub use self::memory::{MemoryImage, ReadMemory, StackSnapshot};
pub use bytes::Bytes;

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

    /// The code bytes at `avma` in no module (JIT code), read from the process: true when
    /// `buf` was filled. The default knows none.
    fn read_code(&self, _avma: u64, _buf: &mut [u8]) -> bool {
        false
    }
}

/// Counters of an [`Unwinder`] since it was made (or since [`Unwinder::reset_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwinderStats {
    /// Calls to [`Unwinder::unwind`].
    pub unwinds: u64,
    /// Frames produced in total.
    pub frames: u64,
    /// Frame rules found in the rule cache.
    pub cache_hits: u64,
    /// Frame rules computed from the CFI tables (then cached).
    pub cache_misses: u64,
    /// Steps through a CFI rule.
    pub cfi_steps: u64,
    /// Steps through the `rt_sigreturn` trampoline recognised by its code bytes.
    pub sigreturn_steps: u64,
    /// Steps taking `[rsp]` as the return address of a frameless exact pc.
    pub stack_scan_steps: u64,
    /// Steps following the frame pointer chain.
    pub fp_steps: u64,
    /// Steps through JIT trampolines without frame pointers (`sub $n,%rsp; call`).
    pub trampoline_steps: u64,
    /// DWARF expressions evaluated.
    pub expr_evals: u64,
    /// Frames copied from a thread's previous walk instead of stepped through
    /// ([`Unwinder::unwind_reusing`]).
    pub reused_frames: u64,
}

impl UnwinderStats {
    /// Fraction of rule lookups served by the cache (0 when none happened).
    pub fn cache_hit_rate(&self) -> f64 {
        let total = self.cache_hits + self.cache_misses;
        if total == 0 {
            0.0
        } else {
            self.cache_hits as f64 / total as f64
        }
    }
}

/// Walks stacks; owns caches and scratch space reused across calls.
pub struct Unwinder {
    max_frames: usize,
    ctx: Box<UnwindContext<usize>>,
    cache: RuleCache,
    stats: UnwinderStats,
}

/// What one step found.
enum Step {
    /// The caller's frame; the register state was updated.
    Next(FrameAddr),
    /// The walk is over.
    End(StackEnd),
}

/// Every tracked register known.
const ALL_VALID: u32 = (1 << NREGS) - 1;

/// DWARF number of rax (a system call's return value).
const RAX: u16 = 0;

const fn bit(reg: u16) -> u32 {
    1 << reg
}

/// Registers still known in a caller after a call (the ABI preserves them).
const CALL_PRESERVED: u32 = {
    let mut m = bit(Regs::RSP) | bit(Regs::RIP);
    let mut i = 0;
    while i < CALLEE_SAVED.len() {
        m |= bit(CALLEE_SAVED[i]);
        i += 1;
    }
    m
};

impl Unwinder {
    /// An unwinder that stops after `max_frames` frames.
    pub fn new(max_frames: usize) -> Self {
        Unwinder {
            max_frames,
            ctx: Box::new(UnwindContext::new()),
            cache: RuleCache::new(),
            stats: UnwinderStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> UnwinderStats {
        self.stats
    }

    /// Zero the counters.
    pub fn reset_stats(&mut self) {
        self.stats = UnwinderStats::default();
    }

    /// Unwind from `regs`, pushing frames (leaf first) into `out` (cleared first), and
    /// report how the walk ended.
    pub fn unwind<M: ReadMemory, U: UnwindModules>(
        &mut self,
        regs: &Regs,
        mem: &M,
        modules: &U,
        out: &mut Vec<FrameAddr>,
    ) -> StackEnd {
        out.clear();
        self.stats.unwinds += 1;
        let end = self.walk(regs, mem, modules, out, &mut None);
        self.stats.frames += out.len() as u64;
        end
    }

    /// Like [`Unwinder::unwind`], but where this walk meets `memo`, the previous walk of
    /// the same thread's stack, in the same state at a stack pointer at or above
    /// `same_from` (the memory from `same_from` up must be what the previous walk read),
    /// the previous walk's frames from there on are copied instead of stepped through
    /// ([`memo`] says how). This walk is then kept in `memo` for the next one.
    pub fn unwind_reusing<M: ReadMemory, U: UnwindModules>(
        &mut self,
        regs: &Regs,
        mem: &M,
        modules: &U,
        out: &mut Vec<FrameAddr>,
        memo: &mut WalkMemo,
        same_from: u64,
    ) -> StackEnd {
        out.clear();
        self.stats.unwinds += 1;
        memo.next_marks.clear();
        let end = self.walk(regs, mem, modules, out, &mut Some((&mut *memo, same_from)));
        memo.frames.clear();
        memo.frames.extend_from_slice(out);
        std::mem::swap(&mut memo.marks, &mut memo.next_marks);
        memo.end = Some(end);
        self.stats.frames += out.len() as u64;
        end
    }

    fn walk<M: ReadMemory, U: UnwindModules>(
        &mut self,
        regs: &Regs,
        mem: &M,
        modules: &U,
        out: &mut Vec<FrameAddr>,
        memo: &mut Option<(&mut WalkMemo, u64)>,
    ) -> StackEnd {
        if self.max_frames == 0 {
            return StackEnd::MaxDepth;
        }
        let mut regs = *regs;
        let mut valid = ALL_VALID;
        let mut frame = FrameAddr::ip(regs.ip());
        // The stack block of the last mark, and where the search in the memo's marks is.
        let mut block = None;
        let mut cursor = 0;
        loop {
            out.push(frame);
            if let Some((m, same_from)) = memo.as_mut()
                && valid & bit(Regs::RSP) != 0
                && block != Some(regs.sp() / MARK_SPACING)
            {
                block = Some(regs.sp() / MARK_SPACING);
                let mark = Mark::new(out.len() - 1, frame, &regs, valid);
                if regs.sp() >= *same_from
                    && let Some(prev) = m.find(&mark, &mut cursor)
                {
                    let rest = &m.frames[prev.index + 1..];
                    let room = self.max_frames - out.len();
                    let end = m.end.unwrap_or(StackEnd::Unknown);
                    // A previous walk cut at the frame limit may go on further now.
                    if end != StackEnd::MaxDepth || rest.len() >= room {
                        let take = rest.len().min(room);
                        out.extend_from_slice(&rest[..take]);
                        self.stats.reused_frames += take as u64;
                        m.next_marks.push(mark);
                        let shift = mark.index.wrapping_sub(prev.index);
                        let later = m.marks[cursor + 1..]
                            .iter()
                            .map(|x| Mark {
                                index: x.index.wrapping_add(shift),
                                ..*x
                            })
                            .filter(|x| x.index < out.len());
                        m.next_marks.extend(later);
                        return if take < rest.len() {
                            StackEnd::MaxDepth
                        } else {
                            end
                        };
                    }
                }
                m.next_marks.push(mark);
            }
            match self.step(frame, &mut regs, &mut valid, mem, modules) {
                Step::End(end) => return end,
                Step::Next(next) => {
                    if out.len() >= self.max_frames {
                        return StackEnd::MaxDepth;
                    }
                    frame = next;
                }
            }
        }
    }

    /// Compute the caller of `frame`.
    fn step<M: ReadMemory, U: UnwindModules>(
        &mut self,
        frame: FrameAddr,
        regs: &mut Regs,
        valid: &mut u32,
        mem: &M,
        modules: &U,
    ) -> Step {
        let module = modules.find(frame.lookup_addr());
        if let Some(m) = module {
            if !frame.is_return
                && *valid & bit(RAX) != 0
                && regs.0[RAX as usize] == 0
                && self.is_clone_child(m, frame)
            {
                return Step::End(StackEnd::Root);
            }
            let Unwinder {
                cache, ctx, stats, ..
            } = self;
            match rule_for(cache, ctx, stats, m, frame) {
                FrameRule::Cfi(rule) => {
                    stats.cfi_steps += 1;
                    return apply_cfi(rule, m, stats, regs, valid, mem);
                }
                FrameRule::SigReturn => {
                    stats.sigreturn_steps += 1;
                    return sigreturn_step(regs, valid, mem);
                }
                FrameRule::NoCfi => {}
            }
        }
        if !frame.is_return
            && let Some(step) = self.stack_scan_step(regs, valid, mem, modules, 0)
        {
            self.stats.stack_scan_steps += 1;
            return step;
        }
        // JIT code (no CFI) sampled between its `push %rbp` and `mov %rsp,%rbp`: the return
        // address is above the saved rbp, and rbp still holds the caller's value, so the
        // frame pointer chain would skip the caller (or, when the caller keeps no frame
        // pointer, end in garbage).
        if !frame.is_return
            && module.is_none()
            && is_frame_pointer_setup(modules, frame.addr)
            && let Some(step) = self.stack_scan_step(regs, valid, mem, modules, 8)
        {
            self.stats.stack_scan_steps += 1;
            return step;
        }
        if module.is_none()
            && frame.is_return
            && let Some(step) = self.trampoline_step(frame, regs, valid, mem, modules)
        {
            self.stats.trampoline_steps += 1;
            return step;
        }
        self.stats.fp_steps += 1;
        fp_step(regs, valid, mem, module.is_some())
    }

    /// A new thread on its first instructions: the child's side of `clone`/`clone3`
    /// returned 0 and is about to jump to the code whose CFI ends every thread's stack
    /// (return address undefined). Its stack holds nothing yet: it is the thread's root.
    fn is_clone_child(&mut self, m: ModuleRef<'_>, frame: FrameAddr) -> bool {
        let Some(start) = m.info.clone_child_start_at(frame.addr.wrapping_sub(m.bias)) else {
            return false;
        };
        let target = FrameAddr::ip(start.wrapping_add(m.bias));
        let Unwinder {
            cache, ctx, stats, ..
        } = self;
        matches!(
            rule_for(cache, ctx, stats, m, target),
            FrameRule::Cfi(rule) if rule.regs[Regs::RIP as usize] == RegRule::Undefined
        )
    }

    /// A return address into JIT code that keeps no frame pointer but whose call is the
    /// function's only stack adjustment: `sub $n,%rsp; call *%reg` (or `call rel32`) right
    /// before the return address, the shape of CPython's perf trampolines. The caller's
    /// return address is then at `[rsp + n]`; it must land in code with CFI.
    fn trampoline_step<M: ReadMemory, U: UnwindModules>(
        &mut self,
        frame: FrameAddr,
        regs: &mut Regs,
        valid: &mut u32,
        mem: &M,
        modules: &U,
    ) -> Option<Step> {
        // The two shapes end at the return address: read only their bytes (a trampoline
        // may start its mapping).
        let mut code = [0u8; 9];
        let n = if modules.read_code(frame.addr.checked_sub(6)?, &mut code[3..]) {
            trampoline_frame_size(&code)
        } else {
            None
        };
        let n = match n {
            Some(n) => n,
            None => {
                if !modules.read_code(frame.addr.checked_sub(9)?, &mut code) {
                    return None;
                }
                trampoline_frame_size(&code)?
            }
        };
        let sp = regs.sp();
        let ra = mem.read_u64(sp.checked_add(n)?)?;
        let target = FrameAddr::ret(ra);
        let m = modules.find(target.lookup_addr())?;
        let Unwinder {
            cache, ctx, stats, ..
        } = self;
        if !matches!(rule_for(cache, ctx, stats, m, target), FrameRule::Cfi(_)) {
            return None;
        }
        regs.set(Regs::RSP, sp.checked_add(n + 8)?);
        regs.set(Regs::RIP, ra);
        *valid &= CALL_PRESERVED;
        Some(Step::Next(target))
    }

    /// For an exact pc without CFI (a frameless stub, a call through a null pointer):
    /// take `[rsp]` as the return address when it lands in code that has CFI.
    fn stack_scan_step<M: ReadMemory, U: UnwindModules>(
        &mut self,
        regs: &mut Regs,
        valid: &mut u32,
        mem: &M,
        modules: &U,
        above: u64,
    ) -> Option<Step> {
        let sp = regs.sp().wrapping_add(above);
        let ra = mem.read_u64(sp)?;
        if ra == 0 {
            return None;
        }
        let target = FrameAddr::ret(ra);
        let m = modules.find(target.lookup_addr())?;
        let Unwinder {
            cache, ctx, stats, ..
        } = self;
        if !matches!(rule_for(cache, ctx, stats, m, target), FrameRule::Cfi(_)) {
            return None;
        }
        regs.set(Regs::RSP, sp.wrapping_add(8));
        regs.set(Regs::RIP, ra);
        *valid &= CALL_PRESERVED;
        Some(Step::Next(target))
    }
}

/// True when the code at `pc` (JIT code, read from the process) is `mov %rsp,%rbp`, the
/// instruction after `push %rbp` in a frame-pointer prologue (either encoding).
fn is_frame_pointer_setup<U: UnwindModules>(modules: &U, pc: u64) -> bool {
    let mut code = [0u8; 3];
    modules.read_code(pc, &mut code) && matches!(code, [0x48, 0x89, 0xe5] | [0x48, 0x8b, 0xec])
}

/// The frame size of a trampoline from the 9 code bytes before a return address:
/// `sub $n,%rsp` (`48 83 ec n`) directly followed by the call that returns there, `call
/// *%reg` (`ff d0+r`) or `call rel32` (`e8 ...`); `n` a positive multiple of 8.
fn trampoline_frame_size(code: &[u8; 9]) -> Option<u64> {
    const SUB_RSP: [u8; 3] = [0x48, 0x83, 0xec];
    let n = if code[3..6] == SUB_RSP && code[7] == 0xff && (0xd0..=0xd7).contains(&code[8]) {
        code[6]
    } else if code[..3] == SUB_RSP && code[4] == 0xe8 {
        code[3]
    } else {
        return None;
    };
    (n > 0 && n < 0x80 && n % 8 == 0).then_some(u64::from(n))
}

/// The rule of `frame` in module `m`, from the cache or the tables.
fn rule_for<'c>(
    cache: &'c mut RuleCache,
    ctx: &mut UnwindContext<usize>,
    stats: &mut UnwinderStats,
    m: ModuleRef<'_>,
    frame: FrameAddr,
) -> &'c FrameRule {
    // Two lookups instead of one borrowed `if let` keep the borrow checker content.
    if cache.get(frame.addr, m.id, frame.is_return).is_some() {
        stats.cache_hits += 1;
        return cache
            .get(frame.addr, m.id, frame.is_return)
            .expect("just found");
    }
    stats.cache_misses += 1;
    let svma = frame.lookup_addr().wrapping_sub(m.bias);
    let found = m.info.find_rule(svma, ctx);
    let rule = match found {
        Found::Rule(r) if r.signal => FrameRule::Cfi(r),
        found => {
            // A signal trampoline without CFI (musl, or CFI that covers the bytes
            // before it) is recognised by its code.
            let pc = frame.addr.wrapping_sub(m.bias);
            let at_trampoline = m.info.is_sigreturn_at(pc)
                || (!frame.is_return && pc >= 7 && m.info.is_sigreturn_at(pc - 7));
            match found {
                _ if at_trampoline => FrameRule::SigReturn,
                Found::Rule(r) => FrameRule::Cfi(r),
                Found::None => FrameRule::NoCfi,
            }
        }
    };
    cache.insert(frame.addr, m.id, frame.is_return, rule)
}

/// Evaluate expression `e` of module `m`.
fn eval_expr<M: ReadMemory>(
    m: ModuleRef<'_>,
    stats: &mut UnwinderStats,
    e: ExprRef,
    initial: Option<u64>,
    regs: &Regs,
    valid: u32,
    mem: &M,
) -> Result<u64, StackEnd> {
    stats.expr_evals += 1;
    let start = e.offset as usize;
    let bytes = m
        .info
        .table_bytes(e.table)
        .and_then(|t| t.get(start..start + usize::from(e.len)))
        .ok_or(StackEnd::Unknown)?;
    eval::evaluate(bytes, initial, &EvalRegs { regs, valid }, m.bias, mem).map_err(|e| match e {
        EvalError::Memory => StackEnd::Truncated,
        EvalError::Invalid => StackEnd::Unknown,
    })
}

/// Apply a CFI rule: compute the CFA, then every register of the caller.
fn apply_cfi<M: ReadMemory>(
    rule: &CfiRule,
    m: ModuleRef<'_>,
    stats: &mut UnwinderStats,
    regs: &mut Regs,
    valid: &mut u32,
    mem: &M,
) -> Step {
    match caller_regs(rule, m, stats, regs, *valid, mem) {
        Ok((new, new_valid)) => {
            let ra = new.ip();
            if !rule.signal && !new.sp().is_multiple_of(8) {
                // Calls and pushes move the stack pointer by 8: a caller's stack pointer
                // that is not 8-aligned comes from garbage (a bogus rsp), and so would
                // its return address, even a 0 that would otherwise end the stack.
                return Step::End(StackEnd::Unknown);
            }
            if ra == 0 && !rule.signal {
                return Step::End(StackEnd::Root);
            }
            if !rule.signal && new.sp() <= regs.sp() {
                // The stack must grow towards its base at each ordinary return.
                return Step::End(StackEnd::Unknown);
            }
            *regs = new;
            *valid = new_valid;
            Step::Next(if rule.signal {
                FrameAddr::ip(ra)
            } else {
                FrameAddr::ret(ra)
            })
        }
        Err(end) => Step::End(end),
    }
}

fn caller_regs<M: ReadMemory>(
    rule: &CfiRule,
    m: ModuleRef<'_>,
    stats: &mut UnwinderStats,
    regs: &Regs,
    valid: u32,
    mem: &M,
) -> Result<(Regs, u32), StackEnd> {
    match rule.regs[Regs::RIP as usize] {
        RegRule::Undefined => return Err(StackEnd::Root),
        RegRule::Unknown => return Err(StackEnd::Unknown),
        _ => {}
    }
    let cfa = match rule.cfa {
        CfaRule::RegOffset { reg, offset } => {
            if valid & (1 << reg) == 0 {
                return Err(StackEnd::Unknown);
            }
            regs.0[usize::from(reg)].wrapping_add(offset as i64 as u64)
        }
        CfaRule::Expr(e) => eval_expr(m, stats, e, None, regs, valid, mem)?,
    };
    let read = |addr: u64| mem.read_u64(addr).ok_or(StackEnd::Truncated);
    // ABI defaults: callee-saved registers keep their value, rsp becomes the CFA, the
    // rest is unknown. Then the explicit rules.
    let mut new = *regs;
    let mut new_valid = (valid & CALL_PRESERVED) | bit(Regs::RSP);
    new.0[Regs::RSP as usize] = cfa;
    let mut pending = rule.explicit;
    while pending != 0 {
        let i = pending.trailing_zeros() as usize;
        pending &= pending - 1;
        let value = match rule.regs[i] {
            RegRule::Unknown | RegRule::Undefined => None,
            RegRule::SameValue => (valid & (1 << i) != 0).then_some(regs.0[i]),
            // A callee-saved register whose save slot cannot be read (below the captured
            // bytes, as in an epilogue that already popped it) is unknown in the caller;
            // only the return address must be readable to go on.
            RegRule::Offset(n) if i == usize::from(Regs::RIP) => {
                Some(read(cfa.wrapping_add(n as i64 as u64))?)
            }
            RegRule::Offset(n) => mem.read_u64(cfa.wrapping_add(n as i64 as u64)),
            RegRule::ValOffset(n) => Some(cfa.wrapping_add(n as i64 as u64)),
            RegRule::Register(s) => (valid & (1 << s) != 0).then_some(regs.0[usize::from(s)]),
            RegRule::Expr(e) => {
                let addr = eval_expr(m, stats, e, Some(cfa), regs, valid, mem)?;
                if i == usize::from(Regs::RIP) {
                    Some(read(addr)?)
                } else {
                    mem.read_u64(addr)
                }
            }
            RegRule::ValExpr(e) => Some(eval_expr(m, stats, e, Some(cfa), regs, valid, mem)?),
        };
        match value {
            Some(v) => {
                new.0[i] = v;
                new_valid |= 1 << i;
            }
            None => new_valid &= !(1 << i),
        }
    }
    let needed = bit(Regs::RIP) | bit(Regs::RSP);
    if new_valid & needed != needed {
        return Err(StackEnd::Unknown);
    }
    Ok((new, new_valid))
}

/// Restore the interrupted context from the `ucontext_t` that `rsp` points at when the
/// pc is at the start of `__restore_rt`.
fn sigreturn_step<M: ReadMemory>(regs: &mut Regs, valid: &mut u32, mem: &M) -> Step {
    let mut buf = [0u8; 17 * 8];
    let base = regs.sp().wrapping_add(UC_MCONTEXT_GREGS);
    if !mem.read_bytes(base, &mut buf) {
        return Step::End(StackEnd::Truncated);
    }
    for (i, &reg) in SIGCONTEXT_ORDER.iter().enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&buf[i * 8..i * 8 + 8]);
        regs.set(reg, u64::from_le_bytes(w));
    }
    *valid = ALL_VALID;
    Step::Next(FrameAddr::ip(regs.ip()))
}

/// Follow the frame pointer: `[rbp]` is the caller's rbp, `[rbp+8]` the return address.
fn fp_step<M: ReadMemory>(regs: &mut Regs, valid: &mut u32, mem: &M, in_module: bool) -> Step {
    if *valid & bit(Regs::RBP) == 0 {
        return Step::End(StackEnd::Unknown);
    }
    let bp = regs.bp();
    let sp = regs.sp();
    if bp == 0 {
        return Step::End(if in_module {
            StackEnd::Root
        } else {
            StackEnd::Unknown
        });
    }
    if bp < sp || !bp.is_multiple_of(8) {
        return Step::End(StackEnd::Unknown);
    }
    let (Some(saved_bp), Some(ra)) = (mem.read_u64(bp), mem.read_u64(bp.wrapping_add(8))) else {
        return Step::End(StackEnd::Truncated);
    };
    if ra == 0 {
        return Step::End(StackEnd::Root);
    }
    let Some(new_sp) = bp.checked_add(16) else {
        return Step::End(StackEnd::Unknown);
    };
    regs.set(Regs::RSP, new_sp);
    regs.set(Regs::RBP, saved_bp);
    regs.set(Regs::RIP, ra);
    *valid = bit(Regs::RSP) | bit(Regs::RBP) | bit(Regs::RIP);
    Step::Next(FrameAddr::ret(ra))
}
