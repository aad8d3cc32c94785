//! DWARF expression evaluation for CFI rules (CFA expressions, `DW_CFA_expression`,
//! `DW_CFA_val_expression`), without heap allocation and with a bounded step count.

use gimli::{
    Encoding, EndianSlice, Evaluation, EvaluationResult, EvaluationStorage, Format, LittleEndian,
    Location, Piece, Reader, Value,
};

use crate::Regs;
use crate::memory::ReadMemory;

/// Upper bound on operations executed by one expression (loops with `DW_OP_skip`).
pub(crate) const MAX_EXPR_STEPS: u32 = 1000;

/// Fixed-size evaluation storage: no allocation per evaluation.
struct FixedStore;

impl<R: Reader> EvaluationStorage<R> for FixedStore {
    type Stack = [Value; 64];
    type ExpressionStack = [(R, R); 4];
    type Result = [Piece<R>; 1];
}

/// Why an expression gave no value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EvalError {
    /// It read memory that is not available (beyond the captured stack).
    Memory,
    /// It is malformed, too long, needs an unknown register or unsupported context.
    Invalid,
}

/// Registers and their validity, as an expression sees them.
pub(crate) struct EvalRegs<'a> {
    /// Register values of the frame being unwound.
    pub regs: &'a Regs,
    /// Bit `i` set when register `i` holds a known value.
    pub valid: u32,
}

/// Evaluate `bytecode` and return the resulting value (an address for `DW_CFA_expression`
/// and CFA expressions, a value for `DW_CFA_val_expression`). `initial` is the CFA for
/// register rules: pushed first, and the value of `DW_OP_call_frame_cfa`. `bias`
/// relocates `DW_OP_addr` operands.
pub(crate) fn evaluate<M: ReadMemory>(
    bytecode: &[u8],
    initial: Option<u64>,
    regs: &EvalRegs<'_>,
    bias: u64,
    mem: &M,
) -> Result<u64, EvalError> {
    let encoding = Encoding {
        format: Format::Dwarf32,
        version: 4,
        address_size: 8,
    };
    let mut eval: Evaluation<EndianSlice<'_, LittleEndian>, FixedStore> =
        Evaluation::new_in(EndianSlice::new(bytecode, LittleEndian), encoding);
    eval.set_max_iterations(MAX_EXPR_STEPS);
    if let Some(v) = initial {
        eval.set_initial_value(v);
    }
    let mut state = eval.evaluate().map_err(|_| EvalError::Invalid)?;
    loop {
        state = match state {
            EvaluationResult::Complete => break,
            EvaluationResult::RequiresMemory {
                address,
                size,
                space: None,
                ..
            } => {
                let size = usize::from(size).min(8);
                let mut buf = [0u8; 8];
                if size == 0 || !mem.read_bytes(address, &mut buf[..size]) {
                    return Err(EvalError::Memory);
                }
                eval.resume_with_memory(Value::Generic(u64::from_le_bytes(buf)))
            }
            EvaluationResult::RequiresRegister { register, .. } => {
                let r = usize::from(register.0);
                if r >= Regs::COUNT || regs.valid & (1 << r) == 0 {
                    return Err(EvalError::Invalid);
                }
                eval.resume_with_register(Value::Generic(regs.regs.0[r]))
            }
            EvaluationResult::RequiresCallFrameCfa => match initial {
                Some(cfa) => eval.resume_with_call_frame_cfa(cfa),
                None => return Err(EvalError::Invalid),
            },
            EvaluationResult::RequiresRelocatedAddress(a) => {
                eval.resume_with_relocated_address(a.wrapping_add(bias))
            }
            _ => return Err(EvalError::Invalid),
        }
        .map_err(|_| EvalError::Invalid)?;
    }
    if let Some(v) = eval.value_result() {
        return v.to_u64(u64::MAX).map_err(|_| EvalError::Invalid);
    }
    match eval.as_result() {
        [
            Piece {
                location: Location::Address { address },
                ..
            },
        ] => Ok(*address),
        [
            Piece {
                location: Location::Value { value },
                ..
            },
        ] => value.to_u64(u64::MAX).map_err(|_| EvalError::Invalid),
        _ => Err(EvalError::Invalid),
    }
}
