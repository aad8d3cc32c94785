//! Compact, `Copy` unwind rules: one CFI row for one address, reduced to what the x86_64
//! unwinder needs, so it can live in a fixed-size cache and be applied without touching
//! gimli again. Expressions stay in their section and are referenced by offset.

use gimli::{CfaRule as GCfa, Register, RegisterRule as GReg, UnwindTableRow};

use crate::Regs;
use crate::arch::CALLEE_SAVED;

/// Number of register columns kept (DWARF 0..=16, 16 being the return address).
pub(crate) const NREGS: usize = Regs::COUNT;

/// Where a DWARF expression lives: `table` 0 is `.eh_frame`, `1 + i` the i-th
/// `.debug_frame` table of the module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExprRef {
    /// Offset of the expression bytes in the section.
    pub offset: u32,
    /// Length of the expression.
    pub len: u16,
    /// Which CFI table of the module holds it.
    pub table: u8,
}

/// How to compute the canonical frame address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CfaRule {
    /// `reg + offset`.
    RegOffset { reg: u8, offset: i32 },
    /// Value of a DWARF expression.
    Expr(ExprRef),
}

/// How to recover one register of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RegRule {
    /// No rule and no ABI default: the value is unknown.
    Unknown,
    /// Explicitly undefined (for the return address: the outermost frame).
    Undefined,
    /// Unchanged.
    SameValue,
    /// Saved at `[CFA + n]`.
    Offset(i32),
    /// Equal to `CFA + n`.
    ValOffset(i32),
    /// Held in another register of this frame.
    Register(u8),
    /// Saved at the address an expression computes (CFA pushed first).
    Expr(ExprRef),
    /// Equal to what an expression computes (CFA pushed first).
    ValExpr(ExprRef),
}

/// The unwind rule of one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CfiRule {
    /// The CFA rule.
    pub cfa: CfaRule,
    /// Rules by DWARF register number; index 16 is the return address column.
    pub regs: [RegRule; NREGS],
    /// Bit `i` set when `regs[i]` differs from the ABI default (callee-saved: same
    /// value, rsp: the CFA, others: unknown), so applying a rule touches only these.
    pub explicit: u32,
    /// The FDE belongs to a signal trampoline (CIE augmentation 'S'): the caller's
    /// address is an exact pc, and every register comes from the rules.
    pub signal: bool,
}

fn expr_ref(e: &gimli::UnwindExpression<usize>, table: u8) -> Option<ExprRef> {
    Some(ExprRef {
        offset: u32::try_from(e.offset).ok()?,
        len: u16::try_from(e.length).ok()?,
        table,
    })
}

fn small_reg(r: Register) -> Option<u8> {
    (usize::from(r.0) < NREGS).then_some(r.0 as u8)
}

/// The default rule of a register the row does not mention.
pub(crate) fn default_rule(reg: u16) -> RegRule {
    if reg == Regs::RSP {
        // The caller's stack pointer is the CFA by definition on x86_64.
        RegRule::ValOffset(0)
    } else if CALLEE_SAVED.contains(&reg) {
        RegRule::SameValue
    } else {
        RegRule::Unknown
    }
}

fn convert_reg(rule: &GReg<usize>, table: u8) -> Option<RegRule> {
    Some(match rule {
        GReg::Undefined => RegRule::Undefined,
        GReg::SameValue => RegRule::SameValue,
        GReg::Offset(n) => RegRule::Offset(i32::try_from(*n).ok()?),
        GReg::ValOffset(n) => RegRule::ValOffset(i32::try_from(*n).ok()?),
        // A register we do not track holds an unknown value.
        GReg::Register(r) => small_reg(*r).map_or(RegRule::Unknown, RegRule::Register),
        GReg::Expression(e) => RegRule::Expr(expr_ref(e, table)?),
        GReg::ValExpression(e) => RegRule::ValExpr(expr_ref(e, table)?),
        // Constants describe pseudo-registers of other architectures.
        GReg::Constant(_) | GReg::Architectural => RegRule::Unknown,
        // `RegisterRule` is not exhaustive across gimli versions.
        #[allow(unreachable_patterns)]
        _ => RegRule::Unknown,
    })
}

/// Reduce a gimli row to a compact rule. `ra_column` is the CIE's return address
/// register; `table` identifies the section for expressions. None when the row uses
/// something this unwinder cannot represent (a CFA based on an untracked register,
/// an offset beyond 32 bits, an expression longer than 64 KiB).
pub(crate) fn compact<S>(
    row: &UnwindTableRow<usize, S>,
    ra_column: Register,
    signal: bool,
    table: u8,
) -> Option<CfiRule>
where
    S: gimli::UnwindContextStorage<usize>,
{
    let cfa = match row.cfa() {
        GCfa::RegisterAndOffset { register, offset } => CfaRule::RegOffset {
            reg: small_reg(*register)?,
            offset: i32::try_from(*offset).ok()?,
        },
        GCfa::Expression(e) => CfaRule::Expr(expr_ref(e, table)?),
    };
    let mut regs = [RegRule::Unknown; NREGS];
    for (i, slot) in regs.iter_mut().enumerate().take(NREGS - 1) {
        let reg = Register(i as u16);
        *slot = match row.register(reg) {
            Some(rule) => convert_reg(&rule, table)?,
            None => default_rule(i as u16),
        };
    }
    regs[Regs::RIP as usize] = match row.register(ra_column) {
        Some(rule) => convert_reg(&rule, table)?,
        None => RegRule::Unknown,
    };
    let explicit = regs
        .iter()
        .enumerate()
        .filter(|&(i, r)| *r != default_rule(i as u16))
        .fold(0u32, |m, (i, _)| m | 1 << i);
    Some(CfiRule {
        cfa,
        regs,
        explicit,
        signal,
    })
}
