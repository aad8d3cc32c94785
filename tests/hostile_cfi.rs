//! Hostile CFI: crafted `.eh_frame`, `.eh_frame_hdr` and `.debug_frame` contents written
//! over the sections of a real program (compiled here), then unwound through the public
//! API. DWARF expressions that loop, overflow the evaluation stack, read unmapped memory
//! or divide by zero; CFA and register rules with huge offsets or untracked registers;
//! records with huge lengths, pointers out of the section and CIE pointer loops; search
//! tables that lie. The unwinder must return, never panic, never loop, keep the frames it
//! found and mark the end (`Unknown`, `Truncated` or `MaxDepth`).

mod hostile_support;

use std::sync::OnceLock;

use hostile_support::{
    OneModule, assert_no_panic, big_source, compile_source, config, section, with_section,
};
use profiler::types::{FrameAddr, Regs, StackEnd};
use profiler::unwind::Unwinder;
use profiler::unwind::memory::MemoryImage;
use proptest::prelude::*;

const BIAS: u64 = 0x5555_0000_0000;
const STACK: u64 = 0x7ffd_0000_0000;
const STACK_WORDS: u64 = 0x1000;
const MAX_FRAMES: usize = 64;

fn eh_program() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| compile_source(&big_source(), &["-O2", "-g"]))
}

fn debug_frame_program() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        compile_source(
            &big_source(),
            &[
                "-O2",
                "-g",
                "-fno-asynchronous-unwind-tables",
                "-fno-unwind-tables",
            ],
        )
    })
}

/// SVMA of `.text` and its length.
fn text(data: &[u8]) -> (u64, u64) {
    let (_, len, addr) = section(data, ".text").unwrap();
    (addr, len as u64)
}

// ---- encoders -----------------------------------------------------------------------

fn uleb(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn sleb(mut v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if (v == 0 && b & 0x40 == 0) || (v == -1 && b & 0x40 != 0) {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// `DW_CFA_def_cfa_expression`.
fn cfa_expr(e: &[u8]) -> Vec<u8> {
    let mut out = vec![0x0f];
    out.extend(uleb(e.len() as u64));
    out.extend_from_slice(e);
    out
}

/// `DW_CFA_expression reg` (or `DW_CFA_val_expression` when `val`).
fn reg_expr(reg: u64, e: &[u8], val: bool) -> Vec<u8> {
    let mut out = vec![if val { 0x16 } else { 0x10 }];
    out.extend(uleb(reg));
    out.extend(uleb(e.len() as u64));
    out.extend_from_slice(e);
    out
}

/// `DW_CFA_def_cfa_sf reg, off` (the offset is factored by the data alignment, -8).
fn def_cfa_sf(reg: u64, factored: i64) -> Vec<u8> {
    let mut out = vec![0x12];
    out.extend(uleb(reg));
    out.extend(sleb(factored));
    out
}

/// `DW_CFA_def_cfa reg, off`.
fn def_cfa(reg: u64, off: u64) -> Vec<u8> {
    let mut out = vec![0x0c];
    out.extend(uleb(reg));
    out.extend(uleb(off));
    out
}

/// `DW_CFA_offset_extended_sf reg, factored`.
fn offset_sf(reg: u64, factored: i64) -> Vec<u8> {
    let mut out = vec![0x11];
    out.extend(uleb(reg));
    out.extend(sleb(factored));
    out
}

/// The x86_64 CIE rules at a call: CFA = rsp + 8, return address at CFA - 8.
const CIE_INSTRS: [u8; 5] = [0x0c, 7, 8, 0x90, 1];

/// A CFI section under construction: `.eh_frame` (relative CIE pointers, id 0) or
/// `.debug_frame` (absolute CIE pointers, id 0xffffffff).
struct Cfi {
    eh: bool,
    out: Vec<u8>,
}

impl Cfi {
    fn new(eh: bool) -> Self {
        Cfi {
            eh,
            out: Vec::new(),
        }
    }

    /// Append a CIE (augmentation `aug`, e.g. "" or "zS"); returns its offset.
    fn cie(&mut self, aug: &str, instrs: &[u8]) -> usize {
        let at = self.out.len();
        let mut body = Vec::new();
        body.extend_from_slice(&(if self.eh { 0u32 } else { u32::MAX }).to_le_bytes());
        body.push(1);
        body.extend_from_slice(aug.as_bytes());
        body.push(0);
        body.extend(uleb(1));
        body.extend(sleb(-8));
        body.push(16);
        if aug.starts_with('z') {
            body.extend(uleb(0));
        }
        body.extend_from_slice(instrs);
        self.raw_entry(&body);
        at
    }

    /// Append an FDE of the CIE at `cie` (with augmentation data when `z`).
    fn fde(&mut self, cie: usize, z: bool, start: u64, len: u64, instrs: &[u8]) -> usize {
        let at = self.out.len();
        let ptr = if self.eh {
            (at + 4 - cie) as u32
        } else {
            cie as u32
        };
        self.fde_with_pointer(ptr, z, start, len, instrs);
        at
    }

    /// Append an FDE with an arbitrary CIE pointer.
    fn fde_with_pointer(&mut self, ptr: u32, z: bool, start: u64, len: u64, instrs: &[u8]) {
        let mut body = Vec::new();
        body.extend_from_slice(&ptr.to_le_bytes());
        body.extend_from_slice(&start.to_le_bytes());
        body.extend_from_slice(&len.to_le_bytes());
        if z {
            body.extend(uleb(0));
        }
        body.extend_from_slice(instrs);
        self.raw_entry(&body);
    }

    fn raw_entry(&mut self, body: &[u8]) {
        self.out
            .extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.out.extend_from_slice(body);
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// The section, with a terminator.
    fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(&[0; 4]);
        self.out
    }
}

/// One FDE over the whole `.text` with `instrs` after the standard CIE rules.
fn one_rule(eh: bool, text: (u64, u64), aug: &str, instrs: &[u8]) -> Vec<u8> {
    let mut c = Cfi::new(eh);
    let cie = c.cie(aug, &CIE_INSTRS);
    c.fde(cie, aug.starts_with('z'), text.0, text.1, instrs);
    c.finish()
}

// ---- running ------------------------------------------------------------------------

/// A stack whose every word returns into `.text`, so each frame meets the hostile rule
/// again (and an honest rule walks to the frame limit).
fn stack(ret: u64) -> MemoryImage {
    let bytes = (0..STACK_WORDS).flat_map(|_| ret.to_le_bytes()).collect();
    let mut m = MemoryImage::new();
    m.add(STACK, bytes);
    m
}

/// The program `data` with crafted CFI: `.eh_frame` (hdr cleared unless given), or
/// `.debug_frame` in the build that has one.
fn image(eh: bool, cfi: &[u8], hdr: Option<&[u8]>) -> Vec<u8> {
    let (base, name) = if eh {
        (eh_program(), ".eh_frame")
    } else {
        (debug_frame_program(), ".debug_frame")
    };
    let (_, len, _) = section(base, name).unwrap();
    assert!(cfi.len() <= len, "crafted {name} of {} > {len}", cfi.len());
    let out = with_section(base, name, cfi);
    if eh {
        with_section(&out, ".eh_frame_hdr", hdr.unwrap_or(&[]))
    } else {
        out
    }
}

/// Unwind from `.text + 0x10` over [`stack`]; checks the invariants and returns the
/// frames and the end.
fn unwind(label: &str, elf: Vec<u8>, eh: bool) -> (Vec<FrameAddr>, StackEnd) {
    let base = if eh {
        eh_program()
    } else {
        debug_frame_program()
    };
    let (t, _) = text(base);
    let pc = BIAS + t + 0x10;
    assert_no_panic(label, || {
        let Some(module) = OneModule::new(elf, BIAS) else {
            panic!("{label}: still an ELF file");
        };
        let mut r = Regs::default();
        r.set(Regs::RIP, pc);
        r.set(Regs::RSP, STACK);
        r.set(Regs::RBP, STACK + 0x80);
        let mem = stack(pc + 1);
        let mut u = Unwinder::new(MAX_FRAMES);
        let mut out = Vec::new();
        let end = u.unwind(&r, &mem, &module, &mut out);
        assert!(!out.is_empty(), "{label}: no frame");
        assert_eq!(out[0], FrameAddr::ip(pc), "{label}: first frame lost");
        assert!(out.len() <= MAX_FRAMES, "{label}: {} frames", out.len());
        assert_eq!(
            end == StackEnd::MaxDepth,
            out.len() == MAX_FRAMES,
            "{label}: {end:?} after {}",
            out.len()
        );
        (out, end)
    })
}

/// Hostile CFA expressions and what the unwind must end with (after the first frame).
fn hostile_expressions() -> Vec<(&'static str, Vec<u8>, StackEnd)> {
    let mut v: Vec<(&'static str, Vec<u8>, StackEnd)> = vec![
        (
            "skip backwards forever",
            vec![0x2f, 0xfd, 0xff],
            StackEnd::Unknown,
        ),
        (
            "bra backwards forever",
            vec![0x31, 0x28, 0xfc, 0xff],
            StackEnd::Unknown,
        ),
        (
            "skip out of the expression",
            vec![0x2f, 0x00, 0x7f],
            StackEnd::Unknown,
        ),
        (
            "skip before the expression",
            vec![0x2f, 0x00, 0x80],
            StackEnd::Unknown,
        ),
        ("empty", vec![], StackEnd::Unknown),
        ("deref of address 0", vec![0x30, 0x06], StackEnd::Truncated),
        (
            "deref near the top of memory",
            [
                vec![0x0e],
                (u64::MAX - 3).to_le_bytes().to_vec(),
                vec![0x06],
            ]
            .concat(),
            StackEnd::Truncated,
        ),
        (
            "deref far above the stack",
            [vec![0x77], sleb(1 << 40), vec![0x06]].concat(),
            StackEnd::Truncated,
        ),
        (
            "division by zero",
            vec![0x31, 0x30, 0x1b],
            StackEnd::Unknown,
        ),
        ("modulo by zero", vec![0x31, 0x30, 0x1d], StackEnd::Unknown),
        (
            "pick beyond the stack",
            vec![0x31, 0x15, 0xff],
            StackEnd::Unknown,
        ),
        ("drop on an empty stack", vec![0x13], StackEnd::Unknown),
        (
            "call4 without a unit",
            vec![0x99, 0, 0, 0, 0],
            StackEnd::Unknown,
        ),
        ("entry value", vec![0xa3, 1, 0x57], StackEnd::Unknown),
        ("deref_size 0", vec![0x77, 0, 0x94, 0], StackEnd::Truncated),
        (
            "deref_size 200",
            vec![0x77, 0, 0x94, 200],
            StackEnd::Unknown,
        ),
        (
            "register beyond the tracked ones",
            [vec![0x92], uleb(0xffff), sleb(8)].concat(),
            StackEnd::Unknown,
        ),
        (
            "two pieces",
            vec![0x77, 8, 0x93, 4, 0x77, 16, 0x93, 4],
            StackEnd::Unknown,
        ),
        (
            "implicit value longer than the expression",
            [vec![0x9e], uleb(0xffff_ffff)].concat(),
            StackEnd::Unknown,
        ),
        ("truncated operand", vec![0x0e, 1, 2], StackEnd::Unknown),
        ("unknown opcode", vec![0xff, 0xfe], StackEnd::Unknown),
        // Shifting by 200 gives 0: a CFA of 0, below which nothing is captured.
        (
            "shift by more than 64",
            vec![0x77, 8, 0x08, 200, 0x24],
            StackEnd::Truncated,
        ),
    ];
    // 200 pushes: far beyond the evaluation stack.
    v.push((
        "stack overflow by pushes",
        vec![0x31; 200],
        StackEnd::Unknown,
    ));
    // dup 2000 times.
    let mut dup = vec![0x77, 8];
    dup.extend(std::iter::repeat_n(0x12, 2000));
    v.push(("stack overflow by dup", dup, StackEnd::Unknown));
    // 5000 no-ops: longer than the step limit, though it would end.
    v.push(("too many steps", vec![0x96; 5000], StackEnd::Unknown));
    v
}

#[test]
fn hostile_cfa_expressions() {
    for eh in [true, false] {
        let t = text(if eh {
            eh_program()
        } else {
            debug_frame_program()
        });
        let mut wrong = Vec::new();
        for (name, e, want) in hostile_expressions() {
            let label = format!("{} CFA expression: {name}", if eh { "eh" } else { "debug" });
            let cfi = one_rule(eh, t, "", &cfa_expr(&e));
            let (frames, end) = unwind(&label, image(eh, &cfi, None), eh);
            // The expression gives no CFA: the walk ends at the first frame, marked.
            if (frames.len(), end) != (1, want) {
                wrong.push(format!("{label}: {} frames, {end:?}", frames.len()));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}

#[test]
fn hostile_register_expressions() {
    let t = text(eh_program());
    for (name, e, want) in hostile_expressions() {
        for val in [false, true] {
            let label = format!("return address {} {name}", if val { "val" } else { "at" });
            // The CFA is fine (rsp + 8); the return address comes from the expression.
            let cfi = one_rule(true, t, "", &reg_expr(16, &e, val));
            let (frames, end) = unwind(&label, image(true, &cfi, None), true);
            // A return address of 0 (the shift gives 0) is the documented end of a stack.
            if end == StackEnd::Root && name.starts_with("shift") {
                continue;
            }
            // The CFA is pushed first, so some expressions that fail alone compute an
            // address here (the CFA itself, for the empty one); the others must stop.
            if frames.len() == 1 {
                assert!(
                    end == want || matches!(end, StackEnd::Truncated | StackEnd::Unknown),
                    "{label}: {end:?}"
                );
            } else {
                assert_ne!(end, StackEnd::Root, "{label}");
            }
        }
        // A callee-saved register with a broken rule: the caller's rbx is unknown, the
        // walk itself goes on.
        let label = format!("rbx from {name}");
        let cfi = one_rule(true, t, "", &reg_expr(3, &e, false));
        let (frames, _) = unwind(&label, image(true, &cfi, None), true);
        assert!(!frames.is_empty());
    }
}

#[test]
fn hostile_cfa_rules() {
    let t = text(eh_program());
    let cases: Vec<(&str, Vec<u8>, &[StackEnd])> = vec![
        // Huge offsets: beyond 32 bits the rule is not representable (treated as no
        // CFI, the frame pointer then fails); within, the reads fall outside the stack.
        (
            "CFA rsp + 2^40",
            def_cfa(7, 1 << 40),
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
        (
            "CFA rsp + u64::MAX",
            def_cfa(7, u64::MAX),
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
        (
            "CFA rsp + i32::MAX",
            def_cfa(7, i32::MAX as u64),
            &[StackEnd::Truncated],
        ),
        (
            "CFA rsp - 2^31 (sf)",
            def_cfa_sf(7, 1 << 28),
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
        (
            "CFA rsp - 8 (sf)",
            def_cfa_sf(7, 1),
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
        (
            "CFA rsp + 0",
            def_cfa(7, 0),
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
        (
            "CFA of an untracked register",
            def_cfa(200, 8),
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
        (
            "CFA of register 2^32",
            def_cfa(1 << 32, 8),
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
        (
            "CFA of rax (unknown in callers)",
            def_cfa(0, 8),
            &[StackEnd::Unknown, StackEnd::Truncated, StackEnd::MaxDepth],
        ),
        (
            "return address at CFA + 2^40",
            offset_sf(16, -(1 << 37)),
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
        (
            "return address at CFA - 2^31",
            offset_sf(16, 1 << 28),
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
        // 0x09: DW_CFA_register ra, ra: the same pc forever while the CFA grows.
        (
            "return address in itself",
            vec![0x09, 16, 16],
            &[StackEnd::MaxDepth],
        ),
        // 0x14: DW_CFA_val_offset rsp: the caller's rsp equals this one.
        (
            "stack pointer does not move",
            vec![0x14, 7, 1],
            &[StackEnd::Unknown],
        ),
        (
            "return address undefined is a root",
            vec![0x07, 16],
            &[StackEnd::Root],
        ),
        // 2000 remember_state: far beyond the row stack.
        (
            "remember_state x 2000",
            vec![0x0a; 2000],
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
        (
            "restore_state without remember",
            vec![0x0b, 0x0b],
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
        (
            "advance_loc4 u32::MAX",
            [
                vec![0x04],
                u32::MAX.to_le_bytes().to_vec(),
                vec![0x0c, 7, 16],
            ]
            .concat(),
            &[StackEnd::MaxDepth, StackEnd::Truncated],
        ),
        (
            "set_loc backwards",
            [vec![0x01], 0u64.to_le_bytes().to_vec()].concat(),
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
        (
            "expression length beyond the FDE",
            [vec![0x0f], uleb(1 << 30)].concat(),
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
        (
            "unknown instruction",
            vec![0x3f, 0x3e],
            &[StackEnd::Unknown, StackEnd::Truncated],
        ),
    ];
    for (name, instrs, allowed) in cases {
        let cfi = one_rule(true, t, "", &instrs);
        let (frames, end) = unwind(name, image(true, &cfi, None), true);
        assert!(allowed.contains(&end), "{name}: {end:?} after {frames:x?}");
    }
}

#[test]
fn signal_frame_rules_that_go_nowhere_are_bounded() {
    // A signal trampoline's caller is exact and may have any stack pointer, so the
    // "stack must grow" check does not apply: a rule that returns to itself must still
    // stop, at the frame limit.
    let t = text(eh_program());
    let mut pc_expr = vec![0x0e];
    pc_expr.extend_from_slice(&(BIAS + t.0 + 0x10).to_le_bytes());
    for (name, instrs) in [
        (
            "val_expression pc, same rsp",
            [reg_expr(16, &pc_expr, true), vec![0x14, 7, 1]].concat(),
        ),
        ("return address in itself", vec![0x09, 16, 16]),
        (
            "CFA rsp - 8",
            [def_cfa_sf(7, 1), reg_expr(16, &pc_expr, true)].concat(),
        ),
    ] {
        let cfi = one_rule(true, t, "zS", &instrs);
        let (frames, end) = unwind(name, image(true, &cfi, None), true);
        assert!(
            matches!(
                end,
                StackEnd::MaxDepth | StackEnd::Truncated | StackEnd::Unknown
            ),
            "{name}: {end:?}"
        );
        assert!(frames.len() <= MAX_FRAMES);
    }
}

/// Records that lie about their own structure.
fn hostile_records(eh: bool, t: (u64, u64)) -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    let id: u32 = if eh { 0 } else { u32::MAX };
    // 64-bit length field with a huge length.
    let mut c = Cfi::new(eh);
    c.raw(&u32::MAX.to_le_bytes());
    c.raw(&(u64::MAX / 2).to_le_bytes());
    c.raw(&id.to_le_bytes());
    v.push(("64-bit huge length", c.finish()));
    // A 32-bit length beyond the section.
    let mut c = Cfi::new(eh);
    c.raw(&0xffff_fff0u32.to_le_bytes());
    c.raw(&id.to_le_bytes());
    c.raw(&[1, 0, 1, 0x78, 16]);
    v.push(("length beyond the section", c.finish()));
    // An FDE whose CIE pointer points before the section.
    let mut c = Cfi::new(eh);
    c.fde_with_pointer(0x7fff_0000, false, t.0, t.1, &[]);
    v.push(("CIE pointer before the section", c.finish()));
    // An FDE whose CIE pointer points at itself.
    let mut c = Cfi::new(eh);
    c.fde_with_pointer(if eh { 4 } else { 0 }, false, t.0, t.1, &[]);
    v.push(("CIE pointer at itself", c.finish()));
    // Two FDEs pointing at each other.
    let mut c = Cfi::new(eh);
    let first_len = 4 + 8 + 8;
    let second = 4 + first_len;
    c.fde_with_pointer(
        if eh {
            (4u32).wrapping_sub(second as u32)
        } else {
            second as u32
        },
        false,
        t.0,
        t.1 / 2,
        &[],
    );
    c.fde_with_pointer(
        if eh { (second + 4) as u32 } else { 0 },
        false,
        t.0 + t.1 / 2,
        t.1 / 2,
        &[],
    );
    v.push(("CIE pointers in a loop", c.finish()));
    // A CIE pointer far beyond the section.
    let mut c = Cfi::new(eh);
    c.cie("", &CIE_INSTRS);
    c.fde_with_pointer(
        if eh { u32::MAX } else { 0x7fff_ffff },
        false,
        t.0,
        t.1,
        &[],
    );
    v.push(("CIE pointer beyond the section", c.finish()));
    // An FDE covering the whole address space.
    let mut c = Cfi::new(eh);
    let cie = c.cie("", &CIE_INSTRS);
    c.fde(cie, false, 0, u64::MAX, &[0x0c, 7, 8]);
    v.push(("FDE over all addresses", c.finish()));
    // An FDE starting at the last address.
    let mut c = Cfi::new(eh);
    let cie = c.cie("", &CIE_INSTRS);
    c.fde(cie, false, u64::MAX, u64::MAX, &[]);
    c.fde(cie, false, t.0, t.1, &[]);
    v.push(("FDE at the top of memory", c.finish()));
    // Augmentation data length beyond the CIE.
    let mut c = Cfi::new(eh);
    let mut body = id.to_le_bytes().to_vec();
    body.extend_from_slice(&[1, b'z', b'R', 0, 1, 0x78, 16]);
    body.extend(uleb(1 << 40));
    c.raw_entry(&body);
    v.push(("augmentation length beyond the CIE", c.finish()));
    // A personality pointer encoded indirect, pointing nowhere.
    let mut c = Cfi::new(eh);
    let mut body = id.to_le_bytes().to_vec();
    body.extend_from_slice(&[1, b'z', b'P', b'L', b'R', 0, 1, 0x78, 16, 7, 0x9b]);
    body.extend_from_slice(&0x7fff_fff0u32.to_le_bytes());
    body.extend_from_slice(&[0x1b, 0x00]);
    body.extend_from_slice(&CIE_INSTRS);
    c.raw_entry(&body);
    v.push(("indirect personality", c.finish()));
    // An unknown augmentation and version.
    let mut c = Cfi::new(eh);
    let mut body = id.to_le_bytes().to_vec();
    body.extend_from_slice(&[200, b'q', b'?', 0, 1, 0x78, 16]);
    c.raw_entry(&body);
    c.fde(0, false, t.0, t.1, &[]);
    v.push(("unknown version and augmentation", c.finish()));
    // A terminator in the middle, then a valid table.
    let mut c = Cfi::new(eh);
    c.raw(&[0; 4]);
    let cie = c.cie("", &CIE_INSTRS);
    c.fde(cie, false, t.0, t.1, &[]);
    v.push(("terminator first", c.finish()));
    // Thousands of one-byte FDEs, overlapping.
    let mut c = Cfi::new(eh);
    let cie = c.cie("", &CIE_INSTRS);
    for i in 0..150u64 {
        c.fde(
            cie,
            false,
            t.0 + (i % 7),
            1 + i * 3,
            &[0x0c, 7, 8 + (i as u8 % 3) * 8],
        );
    }
    v.push(("overlapping FDEs", c.finish()));
    v
}

#[test]
fn hostile_records_eh_frame_and_debug_frame() {
    for eh in [true, false] {
        let t = text(if eh {
            eh_program()
        } else {
            debug_frame_program()
        });
        for (name, cfi) in hostile_records(eh, t) {
            let label = format!("{} {name}", if eh { "eh_frame" } else { "debug_frame" });
            let (frames, end) = unwind(&label, image(eh, &cfi, None), eh);
            assert!(frames.len() <= MAX_FRAMES, "{label}: {end:?}");
        }
    }
}

/// An `.eh_frame_hdr` (pcrel eh_frame_ptr, udata4 count, datarel sdata4 table) with the
/// given claimed count and rows `(initial_location, fde_address)` as SVMAs.
fn hdr(hdr_svma: u64, eh_svma: u64, count: u32, rows: &[(u64, u64)]) -> Vec<u8> {
    let mut out = vec![1u8, 0x1b, 0x03, 0x3b];
    out.extend_from_slice(&(eh_svma.wrapping_sub(hdr_svma + 4) as i32).to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for &(start, fde) in rows {
        out.extend_from_slice(&(start.wrapping_sub(hdr_svma) as i32).to_le_bytes());
        out.extend_from_slice(&(fde.wrapping_sub(hdr_svma) as i32).to_le_bytes());
    }
    out
}

#[test]
fn lying_search_tables() {
    let base = eh_program();
    let t = text(base);
    let (_, hdr_len, hdr_svma) = section(base, ".eh_frame_hdr").unwrap();
    let (_, _, eh_svma) = section(base, ".eh_frame").unwrap();
    let mut c = Cfi::new(true);
    let cie = c.cie("", &CIE_INSTRS);
    let fde = c.fde(cie, false, t.0, t.1, &[]);
    let cfi = c.finish();
    let fde_svma = eh_svma + fde as u64;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("honest", hdr(hdr_svma, eh_svma, 1, &[(t.0, fde_svma)])),
        (
            "count u32::MAX",
            hdr(hdr_svma, eh_svma, u32::MAX, &[(t.0, fde_svma)]),
        ),
        (
            "count beyond the rows",
            hdr(
                hdr_svma,
                eh_svma,
                (hdr_len / 8) as u32 + 5,
                &[(t.0, fde_svma)],
            ),
        ),
        (
            "row into the CIE",
            hdr(hdr_svma, eh_svma, 1, &[(t.0, eh_svma)]),
        ),
        (
            "row into the middle of the FDE",
            hdr(hdr_svma, eh_svma, 1, &[(t.0, fde_svma + 6)]),
        ),
        (
            "row before the section",
            hdr(hdr_svma, eh_svma, 1, &[(t.0, eh_svma - 0x1000)]),
        ),
        (
            "row far beyond the section",
            hdr(hdr_svma, eh_svma, 1, &[(t.0, eh_svma + (1 << 30))]),
        ),
        (
            "row at the terminator",
            hdr(
                hdr_svma,
                eh_svma,
                1,
                &[(t.0, eh_svma + cfi.len() as u64 - 4)],
            ),
        ),
        (
            "unsorted rows",
            hdr(
                hdr_svma,
                eh_svma,
                3,
                &[
                    (t.0 + 0x100, fde_svma),
                    (t.0, eh_svma),
                    (t.0 + 8, fde_svma + 3),
                ],
            ),
        ),
        ("zero rows", hdr(hdr_svma, eh_svma, 0, &[])),
        (
            "weird encodings",
            vec![1, 0x9b, 0x80, 0x8f, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0],
        ),
        (
            "omitted table",
            vec![1, 0x1b, 0x03, 0xff, 0, 0, 0, 0, 1, 0, 0, 0],
        ),
    ];
    for (name, h) in cases {
        assert!(h.len() <= hdr_len, "{name}");
        let label = format!("eh_frame_hdr {name}");
        let (frames, end) = unwind(&label, image(true, &cfi, Some(&h)), true);
        if name == "honest" {
            // Control: the crafted table itself unwinds (CFA = rsp + 8 over a stack of
            // return addresses): one frame per word up to the limit.
            assert_eq!(
                (frames.len(), end),
                (MAX_FRAMES, StackEnd::MaxDepth),
                "{label}"
            );
        } else {
            // A lying table finds the one FDE, or nothing: then the frame pointer
            // fallback takes one step into the garbage and the walk ends, marked.
            assert!(
                (frames.len(), end) == (MAX_FRAMES, StackEnd::MaxDepth)
                    || (frames.len() <= 2 && end == StackEnd::Unknown),
                "{label}: {} frames, {end:?}",
                frames.len()
            );
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// A valid table damaged at random places, or random bytes after a valid CIE, in
    /// `.eh_frame` (with and without a search table) and `.debug_frame`.
    #[test]
    fn damaged_cfi_sections(
        eh in any::<bool>(),
        seed in any::<u64>(),
        damage in 1usize..16,
        random_tail in any::<bool>(),
    ) {
        let base = if eh { eh_program() } else { debug_frame_program() };
        let t = text(base);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut c = Cfi::new(eh);
        let cie = c.cie("", &CIE_INSTRS);
        for i in 0..8u64 {
            let e = &hostile_expressions()[rng.usize(..hostile_expressions().len())].1;
            c.fde(cie, false, t.0 + i * t.1 / 8, t.1 / 8, &cfa_expr(e));
        }
        let mut cfi = c.finish();
        if random_tail {
            let mut tail = vec![0u8; rng.usize(16..2048)];
            rng.fill(&mut tail);
            cfi.extend(tail);
        }
        for _ in 0..damage {
            let i = rng.usize(..cfi.len());
            cfi[i] = rng.u8(..);
        }
        let (_, len, _) = section(base, if eh { ".eh_frame" } else { ".debug_frame" }).unwrap();
        cfi.truncate(len);
        let _ = unwind(&format!("damaged seed {seed}"), image(eh, &cfi, None), eh);
    }

    /// Random search tables over a valid `.eh_frame`.
    #[test]
    fn random_search_tables(seed in any::<u64>(), count in any::<u32>(), rows in 0usize..64) {
        let base = eh_program();
        let t = text(base);
        let (_, hdr_len, hdr_svma) = section(base, ".eh_frame_hdr").unwrap();
        let (_, _, eh_svma) = section(base, ".eh_frame").unwrap();
        let cfi = one_rule(true, t, "", &[]);
        let mut rng = fastrand::Rng::with_seed(seed);
        let table: Vec<(u64, u64)> = (0..rows.min(hdr_len / 8 - 2))
            .map(|_| {
                (
                    t.0.wrapping_add(rng.u64(..t.1 + 64)).wrapping_sub(32),
                    eh_svma.wrapping_add(rng.u64(..cfi.len() as u64 + 64)).wrapping_sub(32),
                )
            })
            .collect();
        let count = if rng.bool() { table.len() as u32 } else { count };
        let h = hdr(hdr_svma, eh_svma, count, &table);
        let _ = unwind(&format!("hdr seed {seed}"), image(true, &cfi, Some(&h)), true);
    }
}
