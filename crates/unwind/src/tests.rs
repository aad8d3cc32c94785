//! Synthetic tests: CFI built with `gimli::write`, wrapped in a hand-made ELF image with
//! chosen section addresses, unwound over hand-made stacks with exact expected frames.

use gimli::write::{
    Address, CallFrameInstruction as I, CieId, CommonInformationEntry, DebugFrame, EhFrame,
    EndianVec, Expression, FrameDescriptionEntry, FrameTable,
};
use gimli::{Encoding, Format, LittleEndian, Register, X86_64};

use super::*;
use crate::Bytes;
use crate::memory::MemoryImage;

// ---- SVMA layout of the synthetic module ------------------------------------------

const TEXT: u64 = 0x1000;
const TEXT_LEN: u64 = 0x1000;
const EH_FRAME_HDR: u64 = 0x2800;
const EH_FRAME: u64 = 0x3000;

/// Frameless leaf: CFA = rsp+8 at entry, rsp+24 from offset 4.
const F_LEAF: u64 = 0x1000;
/// rbp frame: push rbp; mov rbp,rsp; push rbx.
const F_BP: u64 = 0x1100;
/// The outermost function: return address undefined.
const F_ROOT: u64 = 0x1200;
/// glibc-style `__restore_rt`: FDE from the nop before it, 'S' augmentation.
const F_SIG: u64 = 0x1300;
/// .plt with the binutils CFA expression; its FDE also covers the byte before F_MUSL.
const F_PLT: u64 = 0x1400;
/// musl-style `__restore_rt`: sigreturn code, no CFI.
const F_MUSL: u64 = 0x1500;
/// CFA = rbx + 16 (tests callee-saved recovery of rbx).
const F_RBX: u64 = 0x1600;
/// No CFI at all (frame-pointer code).
const F_NOCFI: u64 = 0x1700;

/// Where the module is mapped: bias = AVMA - SVMA.
const BIAS: u64 = 0x5555_0000_0000;
/// Base of the synthetic stack.
const STACK: u64 = 0x7ffd_0000_0000;

const RSP: Register = X86_64::RSP;
const RBP: Register = X86_64::RBP;
const RBX: Register = X86_64::RBX;
const RA: Register = X86_64::RA;

fn avma(svma: u64) -> u64 {
    svma + BIAS
}

fn cie(version: u16, signal: bool, pcrel: bool) -> CommonInformationEntry {
    let enc = Encoding {
        format: Format::Dwarf32,
        version,
        address_size: 8,
    };
    let mut c = CommonInformationEntry::new(enc, 1, -8, RA);
    c.add_instruction(I::Cfa(RSP, 8));
    c.add_instruction(I::Offset(RA, -8));
    c.signal_trampoline = signal;
    if pcrel {
        c.fde_address_encoding = gimli::DW_EH_PE_pcrel | gimli::DW_EH_PE_sdata4;
    }
    c
}

/// glibc `__restore_rt` CFI: CFA = [rsp + 160] (uc_mcontext.rsp), every register at
/// rsp + 40 + 8*i (its slot in `gregs`).
fn sig_fde(addr: Address) -> FrameDescriptionEntry {
    let mut f = FrameDescriptionEntry::new(addr, 0x40);
    let mut cfa = Expression::new();
    cfa.op_breg(RSP, 40 + 15 * 8);
    cfa.op_deref();
    f.add_instruction(0, I::CfaExpression(cfa));
    for (i, &reg) in SIGCONTEXT_ORDER.iter().enumerate() {
        let mut e = Expression::new();
        e.op_breg(RSP, 40 + 8 * i as i64);
        f.add_instruction(0, I::Expression(Register(reg), e));
    }
    f
}

/// The CFA expression binutils emits for `.plt` entries (16-byte slots; after the
/// `push` at offset 11 one more word is on the stack).
fn plt_cfa_expression() -> Expression {
    // DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_lit11; DW_OP_ge;
    // DW_OP_lit3; DW_OP_shl; DW_OP_plus
    Expression::raw(vec![
        0x77, 8, 0x80, 0, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
    ])
}

/// Build the frame table. `addr` turns an SVMA into the `Address` to write (pcrel
/// encodings for `.eh_frame` are relative to the section, so they need its SVMA).
fn frame_table(version: u16, addr: impl Fn(u64) -> Address, pcrel: bool) -> FrameTable {
    let mut t = FrameTable::default();
    let normal: CieId = t.add_cie(cie(version, false, pcrel));
    let signal: CieId = t.add_cie(cie(version, true, pcrel));

    let mut leaf = FrameDescriptionEntry::new(addr(F_LEAF), 0x100);
    leaf.add_instruction(4, I::CfaOffset(24));
    t.add_fde(normal, leaf);

    let mut bp = FrameDescriptionEntry::new(addr(F_BP), 0x100);
    bp.add_instruction(1, I::CfaOffset(16));
    bp.add_instruction(1, I::Offset(RBP, -16));
    bp.add_instruction(4, I::CfaRegister(RBP));
    bp.add_instruction(8, I::Offset(RBX, -24));
    t.add_fde(normal, bp);

    let mut root = FrameDescriptionEntry::new(addr(F_ROOT), 0x100);
    root.add_instruction(0, I::Undefined(RA));
    t.add_fde(normal, root);

    t.add_fde(signal, sig_fde(addr(F_SIG)));

    let mut plt = FrameDescriptionEntry::new(addr(F_PLT), 0x100);
    plt.add_instruction(0, I::CfaExpression(plt_cfa_expression()));
    t.add_fde(normal, plt);

    let mut rbx = FrameDescriptionEntry::new(addr(F_RBX), 0x100);
    rbx.add_instruction(0, I::Cfa(RBX, 16));
    t.add_fde(normal, rbx);
    t
}

fn eh_frame_bytes() -> Vec<u8> {
    let t = frame_table(1, |a| Address::Constant(a.wrapping_sub(EH_FRAME)), true);
    let mut w = EhFrame(EndianVec::new(LittleEndian));
    t.write_eh_frame(&mut w).unwrap();
    w.0.into_vec()
}

fn debug_frame_bytes() -> Vec<u8> {
    let t = frame_table(4, Address::Constant, false);
    let mut w = DebugFrame(EndianVec::new(LittleEndian));
    t.write_debug_frame(&mut w).unwrap();
    w.0.into_vec()
}

/// `.eh_frame_hdr` with a sorted search table (datarel sdata4, as ld writes it).
fn eh_frame_hdr_bytes(eh: &[u8], eh_svma: u64) -> Vec<u8> {
    use gimli::UnwindSection;
    let sec = gimli::EhFrame::new(eh, LittleEndian);
    let bases = gimli::BaseAddresses::default().set_eh_frame(EH_FRAME);
    let mut rows = Vec::new();
    let mut entries = sec.entries(&bases);
    while let Some(e) = entries.next().unwrap() {
        if let gimli::CieOrFde::Fde(p) = e {
            let fde = p.parse(gimli::EhFrame::cie_from_offset).unwrap();
            rows.push((fde.initial_address(), EH_FRAME + fde.offset() as u64));
        }
    }
    rows.sort();
    let mut out = vec![1u8, 0x1b, 0x03, 0x3b];
    let here = EH_FRAME_HDR + 4;
    out.extend_from_slice(&((eh_svma as i64 - here as i64) as i32).to_le_bytes());
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for (start, fde) in rows {
        out.extend_from_slice(&((start as i64 - EH_FRAME_HDR as i64) as i32).to_le_bytes());
        out.extend_from_slice(&((fde as i64 - EH_FRAME_HDR as i64) as i32).to_le_bytes());
    }
    out
}

/// Code bytes of `.text`: int3 filler, the two sigreturn trampolines.
fn text_bytes() -> Vec<u8> {
    let mut t = vec![0xccu8; TEXT_LEN as usize];
    let put = |t: &mut Vec<u8>, at: u64, b: &[u8]| {
        let o = (at - TEXT) as usize;
        t[o..o + b.len()].copy_from_slice(b);
    };
    put(&mut t, F_SIG, &[0x90]);
    put(&mut t, F_SIG + 1, &crate::arch::SIGRETURN_CODE);
    put(&mut t, F_MUSL, &crate::arch::SIGRETURN_CODE);
    t
}

// ---- a minimal ELF64 writer -----------------------------------------------------------

struct Sec {
    name: &'static str,
    addr: u64,
    data: Vec<u8>,
    /// Gets a PT_LOAD (executable when `exec`).
    load: Option<bool>,
}

/// An ELF image of `secs`; with `shdrs` false it has program headers only (as an image
/// recovered from memory may), `.eh_frame_hdr` then found through `PT_GNU_EH_FRAME`.
fn elf_image(secs: &[Sec], shdrs: bool) -> Vec<u8> {
    let has_hdr = secs.iter().any(|s| s.name == ".eh_frame_hdr");
    let phnum = secs.iter().filter(|s| s.load.is_some()).count() + usize::from(has_hdr);
    let mut out = vec![0u8; 64 + 56 * phnum];
    let mut offsets = Vec::new();
    for s in secs {
        while !out.len().is_multiple_of(16) {
            out.push(0);
        }
        offsets.push(out.len() as u64);
        out.extend_from_slice(&s.data);
    }
    let mut shstrtab = vec![0u8];
    let mut names = Vec::new();
    for s in secs {
        names.push(shstrtab.len() as u32);
        shstrtab.extend_from_slice(s.name.as_bytes());
        shstrtab.push(0);
    }
    let shstrtab_name = shstrtab.len() as u32;
    shstrtab.extend_from_slice(b".shstrtab\0");
    let shstrtab_off = out.len() as u64;
    out.extend_from_slice(&shstrtab);
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
    let shoff = out.len() as u64;
    let shnum = secs.len() + 2;
    let shdr =
        |out: &mut Vec<u8>, name: u32, ty: u32, flags: u64, addr: u64, off: u64, size: u64| {
            out.extend_from_slice(&name.to_le_bytes());
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&1u64.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes());
        };
    shdr(&mut out, 0, 0, 0, 0, 0, 0);
    for (i, s) in secs.iter().enumerate() {
        let flags = if s.load == Some(true) { 0x6 } else { 0x2 };
        shdr(
            &mut out,
            names[i],
            1,
            flags,
            s.addr,
            offsets[i],
            s.data.len() as u64,
        );
    }
    shdr(
        &mut out,
        shstrtab_name,
        3,
        0,
        0,
        shstrtab_off,
        shstrtab.len() as u64,
    );

    // ELF header.
    let mut h = Vec::new();
    h.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    h.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN
    h.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes()); // entry
    h.extend_from_slice(&64u64.to_le_bytes()); // phoff
    h.extend_from_slice(&(if shdrs { shoff } else { 0 }).to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&64u16.to_le_bytes());
    h.extend_from_slice(&56u16.to_le_bytes());
    h.extend_from_slice(&(phnum as u16).to_le_bytes());
    h.extend_from_slice(&64u16.to_le_bytes());
    let (shnum, shstrndx) = if shdrs { (shnum, shnum - 1) } else { (0, 0) };
    h.extend_from_slice(&(shnum as u16).to_le_bytes());
    h.extend_from_slice(&(shstrndx as u16).to_le_bytes());
    // Program headers.
    for (i, s) in secs.iter().enumerate() {
        let Some(exec) = s.load else { continue };
        h.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        h.extend_from_slice(&(if exec { 5u32 } else { 4u32 }).to_le_bytes());
        h.extend_from_slice(&offsets[i].to_le_bytes());
        h.extend_from_slice(&s.addr.to_le_bytes());
        h.extend_from_slice(&s.addr.to_le_bytes());
        h.extend_from_slice(&(s.data.len() as u64).to_le_bytes());
        h.extend_from_slice(&(s.data.len() as u64).to_le_bytes());
        h.extend_from_slice(&0x1000u64.to_le_bytes());
    }
    if let Some(i) = secs.iter().position(|s| s.name == ".eh_frame_hdr") {
        h.extend_from_slice(&0x6474_e550u32.to_le_bytes()); // PT_GNU_EH_FRAME
        h.extend_from_slice(&4u32.to_le_bytes());
        h.extend_from_slice(&offsets[i].to_le_bytes());
        h.extend_from_slice(&secs[i].addr.to_le_bytes());
        h.extend_from_slice(&secs[i].addr.to_le_bytes());
        h.extend_from_slice(&(secs[i].data.len() as u64).to_le_bytes());
        h.extend_from_slice(&(secs[i].data.len() as u64).to_le_bytes());
        h.extend_from_slice(&4u64.to_le_bytes());
    }
    out[..h.len()].copy_from_slice(&h);
    out
}

fn elf(secs: &[Sec]) -> Vec<u8> {
    elf_image(secs, true)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tables {
    /// `.eh_frame` searched through `.eh_frame_hdr`.
    Hdr,
    /// `.eh_frame` only: own index.
    NoHdr,
    /// A `.eh_frame_hdr` whose `eh_frame_ptr` is wrong: must be ignored.
    BadHdr,
    /// No `.eh_frame`; `.debug_frame` from a separate debug file.
    DebugFile,
    /// `.eh_frame_hdr` and `.eh_frame` found through program headers only.
    NoSectionHeaders,
}

fn module_info(tables: Tables) -> UnwindInfo {
    let text = Sec {
        name: ".text",
        addr: TEXT,
        data: text_bytes(),
        load: Some(true),
    };
    let eh = eh_frame_bytes();
    let mut secs = vec![text];
    match tables {
        Tables::Hdr | Tables::BadHdr | Tables::NoSectionHeaders => {
            let ptr = if tables == Tables::BadHdr {
                EH_FRAME + 0x10
            } else {
                EH_FRAME
            };
            let hdr = eh_frame_hdr_bytes(&eh, ptr);
            let load = Some(false);
            secs.push(Sec {
                name: ".eh_frame_hdr",
                addr: EH_FRAME_HDR,
                data: hdr,
                load,
            });
            secs.push(Sec {
                name: ".eh_frame",
                addr: EH_FRAME,
                data: eh,
                load,
            });
        }
        Tables::NoHdr => secs.push(Sec {
            name: ".eh_frame",
            addr: EH_FRAME,
            data: eh,
            load: None,
        }),
        Tables::DebugFile => {}
    }
    let image = elf_image(&secs, tables != Tables::NoSectionHeaders);
    let mut info = UnwindInfo::from_elf(Bytes::from_owner(image)).unwrap();
    assert_eq!(
        info.uses_eh_frame_hdr(),
        matches!(tables, Tables::Hdr | Tables::NoSectionHeaders)
    );
    if tables == Tables::DebugFile {
        assert!(!info.has_cfi());
        let dbg = Sec {
            name: ".debug_frame",
            addr: 0,
            data: debug_frame_bytes(),
            load: None,
        };
        info.add_debug_file(Bytes::from_owner(elf(&[dbg])));
        assert_eq!(info.debug_frame_count(), 1);
    }
    info
}

/// One module at BIAS covering `.text`.
struct OneModule(UnwindInfo);

impl UnwindModules for OneModule {
    fn find(&self, a: u64) -> Option<ModuleRef<'_>> {
        (a >= avma(TEXT) && a < avma(TEXT + TEXT_LEN)).then_some(ModuleRef {
            info: &self.0,
            bias: BIAS,
            id: 7,
        })
    }
}

/// A stack region at STACK, written word by word.
struct Stack(Vec<u8>);

impl Stack {
    fn new(len: usize) -> Self {
        Stack(vec![0; len])
    }
    fn put(&mut self, off: u64, v: u64) -> &mut Self {
        let o = off as usize;
        self.0[o..o + 8].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn image(&self) -> MemoryImage {
        let mut m = MemoryImage::new();
        m.add(STACK, self.0.clone());
        m
    }
}

fn regs(rip: u64, rsp: u64, rbp: u64, rbx: u64) -> Regs {
    let mut r = Regs::default();
    r.set(Regs::RIP, rip);
    r.set(Regs::RSP, rsp);
    r.set(Regs::RBP, rbp);
    r.set(Regs::RBX, rbx);
    r
}

fn run(u: &mut Unwinder, m: &OneModule, r: &Regs, mem: &MemoryImage) -> (Vec<FrameAddr>, StackEnd) {
    let mut out = vec![FrameAddr::ip(1)]; // must be cleared
    let end = u.unwind(r, mem, m, &mut out);
    (out, end)
}

const ALL_TABLES: [Tables; 4] = [
    Tables::Hdr,
    Tables::NoHdr,
    Tables::BadHdr,
    Tables::DebugFile,
];

/// leaf (frameless) -> rbp frame (saves rbx) -> CFA from rbx -> root.
fn chain_stack() -> (Regs, MemoryImage) {
    let mut s = Stack::new(0x100);
    s.put(0x10, avma(F_BP + 0x50)) // leaf: CFA = rsp+24, RA at CFA-8
        .put(0x28, STACK + 0x60) // F_BP saved rbx at CFA-24
        .put(0x30, 0x1234) // F_BP saved rbp at CFA-16
        .put(0x38, avma(F_RBX + 0x50)) // F_BP RA
        .put(0x68, avma(F_ROOT + 0x50)); // F_RBX: CFA = rbx+16 = STACK+0x70
    // rbx is garbage in frame 0: only the value F_BP saved makes F_RBX unwind.
    (
        regs(avma(F_LEAF + 0x10), STACK, STACK + 0x30, 0xdead_beef),
        s.image(),
    )
}

#[test]
fn frameless_rbp_callee_saved_and_root() {
    for tables in ALL_TABLES {
        let m = OneModule(module_info(tables));
        let mut u = Unwinder::new(64);
        let (r, mem) = chain_stack();
        let (frames, end) = run(&mut u, &m, &r, &mem);
        assert_eq!(
            frames,
            vec![
                FrameAddr::ip(avma(F_LEAF + 0x10)),
                FrameAddr::ret(avma(F_BP + 0x50)),
                FrameAddr::ret(avma(F_RBX + 0x50)),
                FrameAddr::ret(avma(F_ROOT + 0x50)),
            ],
            "{tables:?}"
        );
        assert_eq!(end, StackEnd::Root, "{tables:?}");
        assert_eq!(u.stats().cfi_steps, 4);
    }
}

#[test]
fn rule_cache_serves_repeated_addresses() {
    let m = OneModule(module_info(Tables::Hdr));
    let mut u = Unwinder::new(64);
    let (r, mem) = chain_stack();
    run(&mut u, &m, &r, &mem);
    let first = u.stats();
    assert_eq!((first.cache_hits, first.cache_misses), (0, 4));
    let (frames, end) = run(&mut u, &m, &r, &mem);
    let second = u.stats();
    assert_eq!((second.cache_hits, second.cache_misses), (4, 4));
    assert_eq!((frames.len(), end), (4, StackEnd::Root));
    assert_eq!(second.unwinds, 2);
    assert_eq!(second.frames, 8);
    // Another module id must not hit the entries of module 7.
    struct Other<'a>(&'a UnwindInfo);
    impl UnwindModules for Other<'_> {
        fn find(&self, a: u64) -> Option<ModuleRef<'_>> {
            (a >= avma(TEXT) && a < avma(TEXT + TEXT_LEN)).then_some(ModuleRef {
                info: self.0,
                bias: BIAS,
                id: 8,
            })
        }
    }
    let mut out = Vec::new();
    u.unwind(&r, &mem, &Other(&m.0), &mut out);
    assert_eq!(u.stats().cache_misses, 8);
}

/// A handler (leaf) returning into `__restore_rt`, which restores a context whose pc is
/// in the leaf again (exact), whose caller is the root.
fn signal_stack(trampoline_ret: u64) -> (Regs, MemoryImage) {
    let mut s = Stack::new(0x400);
    let uc = 0x18; // the leaf's CFA: rsp after the handler returns
    s.put(0x10, trampoline_ret);
    let gregs = uc + UC_MCONTEXT_GREGS;
    let mut ctx = [0u64; 17];
    ctx[15] = STACK + 0x300; // rsp
    ctx[16] = avma(F_LEAF + 0x20); // rip
    ctx[10] = STACK + 0x3f0; // rbp
    ctx[11] = 0xb0b; // rbx
    for (i, v) in ctx.iter().enumerate() {
        s.put(gregs + 8 * i as u64, *v);
    }
    s.put(0x300 + 0x10, avma(F_ROOT + 0x8));
    (regs(avma(F_LEAF + 0x10), STACK, 0, 0), s.image())
}

#[test]
fn signal_frame_through_cfi() {
    for tables in ALL_TABLES {
        let m = OneModule(module_info(tables));
        let mut u = Unwinder::new(64);
        let (r, mem) = signal_stack(avma(F_SIG + 1));
        let (frames, end) = run(&mut u, &m, &r, &mem);
        assert_eq!(
            frames,
            vec![
                FrameAddr::ip(avma(F_LEAF + 0x10)),
                FrameAddr::ret(avma(F_SIG + 1)),
                FrameAddr::ip(avma(F_LEAF + 0x20)),
                FrameAddr::ret(avma(F_ROOT + 0x8)),
            ],
            "{tables:?}"
        );
        assert_eq!(end, StackEnd::Root);
        let st = u.stats();
        assert_eq!(
            st.sigreturn_steps, 0,
            "glibc-style trampoline goes through its CFI"
        );
        assert!(
            st.expr_evals >= 17,
            "CFA and registers come from expressions"
        );
    }
}

#[test]
fn signal_frame_without_cfi_by_code_bytes() {
    // The byte before F_MUSL is covered by the PLT FDE (not a signal frame): the code
    // bytes at the return address must win.
    let m = OneModule(module_info(Tables::Hdr));
    let mut u = Unwinder::new(64);
    let (r, mem) = signal_stack(avma(F_MUSL));
    let (frames, end) = run(&mut u, &m, &r, &mem);
    assert_eq!(
        frames,
        vec![
            FrameAddr::ip(avma(F_LEAF + 0x10)),
            FrameAddr::ret(avma(F_MUSL)),
            FrameAddr::ip(avma(F_LEAF + 0x20)),
            FrameAddr::ret(avma(F_ROOT + 0x8)),
        ]
    );
    assert_eq!(end, StackEnd::Root);
    assert_eq!(u.stats().sigreturn_steps, 1);

    // Sampled exactly at the trampoline's `syscall`: rsp still points at the ucontext.
    let (_, mem) = signal_stack(0);
    let mut r = regs(avma(F_MUSL + 7), STACK + 0x18, 0, 0);
    r.set(0, 15);
    let (frames, end) = run(&mut u, &m, &r, &mem);
    assert_eq!(
        frames,
        vec![
            FrameAddr::ip(avma(F_MUSL + 7)),
            FrameAddr::ip(avma(F_LEAF + 0x20)),
            FrameAddr::ret(avma(F_ROOT + 0x8)),
        ]
    );
    assert_eq!(end, StackEnd::Root);
}

#[test]
fn plt_entry_cfa_expression() {
    for tables in ALL_TABLES {
        let m = OneModule(module_info(tables));
        let mut u = Unwinder::new(64);
        // Before the push at slot offset 11: CFA = rsp + 8.
        let mut s = Stack::new(0x40);
        s.put(0, avma(F_ROOT + 0x30));
        let r = regs(avma(F_PLT + 0x20 + 6), STACK, 0, 0);
        let (frames, end) = run(&mut u, &m, &r, &s.image());
        assert_eq!(
            frames,
            vec![
                FrameAddr::ip(avma(F_PLT + 0x26)),
                FrameAddr::ret(avma(F_ROOT + 0x30))
            ],
            "{tables:?}"
        );
        assert_eq!(end, StackEnd::Root);
        // After the push: CFA = rsp + 16.
        let mut s = Stack::new(0x40);
        s.put(0, 3).put(8, avma(F_ROOT + 0x40));
        let r = regs(avma(F_PLT + 0x20 + 12), STACK, 0, 0);
        let (frames, end) = run(&mut u, &m, &r, &s.image());
        assert_eq!(
            frames,
            vec![
                FrameAddr::ip(avma(F_PLT + 0x2c)),
                FrameAddr::ret(avma(F_ROOT + 0x40))
            ]
        );
        assert_eq!(end, StackEnd::Root);
        assert_eq!(u.stats().expr_evals, 2);
    }
}

#[test]
fn frame_pointer_fallback_without_cfi() {
    let m = OneModule(module_info(Tables::Hdr));
    let mut u = Unwinder::new(64);
    let mut s = Stack::new(0x100);
    s.put(0, 5) // [rsp]: not a code address, so no stack-scan guess
        .put(0x20, STACK + 0x40)
        .put(0x28, avma(F_NOCFI + 0x50))
        .put(0x40, STACK + 0x80)
        .put(0x48, avma(F_BP + 0x10)) // CFI again: CFA = rbp+16 with rbp = STACK+0x80
        .put(0x80, 0)
        .put(0x88, avma(F_ROOT + 0x10));
    let r = regs(avma(F_NOCFI + 0x10), STACK, STACK + 0x20, 0);
    let (frames, end) = run(&mut u, &m, &r, &s.image());
    assert_eq!(
        frames,
        vec![
            FrameAddr::ip(avma(F_NOCFI + 0x10)),
            FrameAddr::ret(avma(F_NOCFI + 0x50)),
            FrameAddr::ret(avma(F_BP + 0x10)),
            FrameAddr::ret(avma(F_ROOT + 0x10)),
        ]
    );
    assert_eq!(end, StackEnd::Root);
    assert_eq!(u.stats().fp_steps, 2);

    // A pc in no module (JIT code) with a frame pointer chain into the module.
    let r = regs(0x1234_5678, STACK, STACK + 0x40, 0);
    let (frames, end) = run(&mut u, &m, &r, &s.image());
    assert_eq!(frames[1], FrameAddr::ret(avma(F_BP + 0x10)));
    assert_eq!((frames.len(), end), (3, StackEnd::Root));

    // rbp = 0 inside a known module without CFI ends at the root...
    let r = regs(avma(F_NOCFI + 0x10), STACK, 0, 0);
    assert_eq!(run(&mut u, &m, &r, &s.image()).1, StackEnd::Root);
    // ...but not for a pc nobody knows.
    let r = regs(0x1234_5678, STACK, 0, 0);
    let (frames, end) = run(&mut u, &m, &r, &s.image());
    assert_eq!((frames.len(), end), (1, StackEnd::Unknown));
}

#[test]
fn exact_pc_without_cfi_uses_return_address_at_rsp() {
    let m = OneModule(module_info(Tables::Hdr));
    let mut u = Unwinder::new(64);
    let mut s = Stack::new(0x40);
    s.put(0, avma(F_ROOT + 0x21));
    // A call through a null function pointer: pc 0, the return address at [rsp].
    let r = regs(0, STACK, 0x77, 0);
    let (frames, end) = run(&mut u, &m, &r, &s.image());
    assert_eq!(
        frames,
        vec![FrameAddr::ip(0), FrameAddr::ret(avma(F_ROOT + 0x21))]
    );
    assert_eq!(end, StackEnd::Root);
    assert_eq!(u.stats().stack_scan_steps, 1);
}

#[test]
fn garbage_and_cyclic_stacks_terminate() {
    let m = OneModule(module_info(Tables::Hdr));
    // Every word returns into the leaf's entry (CFA = rsp+8): each frame pops one word.
    let mut s = Stack::new(0x8000);
    for i in 0..0x1000u64 {
        s.put(i * 8, avma(F_LEAF + 1));
    }
    let r = regs(avma(F_LEAF), STACK, 0, 0);
    let mut u = Unwinder::new(100);
    let (frames, end) = run(&mut u, &m, &r, &s.image());
    assert_eq!((frames.len(), end), (100, StackEnd::MaxDepth));
    let mut u = Unwinder::new(100_000);
    let (frames, end) = run(&mut u, &m, &r, &s.image());
    assert_eq!(end, StackEnd::Truncated);
    assert_eq!(frames.len(), 0x1000 + 1);

    // An rbp frame whose saved rbp points at itself: the CFA does not move.
    let mut s = Stack::new(0x100);
    s.put(0x20, STACK + 0x20).put(0x28, avma(F_BP + 0x10));
    let r = regs(avma(F_BP + 0x10), STACK + 0x10, STACK + 0x20, 0);
    let (frames, end) = run(&mut u, &m, &r, &s.image());
    assert_eq!(end, StackEnd::Unknown);
    assert_eq!(frames.len(), 2);

    // Frame pointers that loop back.
    let mut s = Stack::new(0x100);
    s.put(0x20, STACK + 0x40)
        .put(0x28, avma(F_NOCFI + 8))
        .put(0x40, STACK + 0x20)
        .put(0x48, avma(F_NOCFI + 8));
    let r = regs(avma(F_NOCFI), STACK, STACK + 0x20, 0);
    let (frames, end) = run(&mut u, &m, &r, &s.image());
    assert_eq!((frames.len(), end), (3, StackEnd::Unknown));

    // Random garbage never hangs and never exceeds the limit.
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..300 {
        let mut s = Stack::new(0x400);
        for i in 0..0x80u64 {
            let v = match rng.u8(0..4) {
                0 => avma(TEXT + rng.u64(0..TEXT_LEN)),
                1 => STACK + rng.u64(0..0x400),
                2 => 0,
                _ => rng.u64(..),
            };
            s.put(i * 8, v);
        }
        let r = regs(
            avma(TEXT + rng.u64(0..TEXT_LEN)),
            STACK + 8 * rng.u64(0..8),
            STACK + 8 * rng.u64(0..0x80),
            rng.u64(..),
        );
        let mut u = Unwinder::new(256);
        let (frames, _) = run(&mut u, &m, &r, &s.image());
        assert!(!frames.is_empty() && frames.len() <= 256);
    }
}

#[test]
fn truncated_stack() {
    let m = OneModule(module_info(Tables::Hdr));
    let mut u = Unwinder::new(64);
    // The leaf's return address lies at rsp+16, beyond the 16 captured bytes.
    let s = Stack::new(0x10);
    let r = regs(avma(F_LEAF + 0x10), STACK, 0, 0);
    let (frames, end) = run(&mut u, &m, &r, &s.image());
    assert_eq!(
        (frames, end),
        (
            vec![FrameAddr::ip(avma(F_LEAF + 0x10))],
            StackEnd::Truncated
        )
    );
    // Frame-pointer fallback beyond the capture.
    let r = regs(avma(F_NOCFI), STACK, STACK + 0x100, 0);
    assert_eq!(run(&mut u, &m, &r, &s.image()).1, StackEnd::Truncated);
}

#[test]
fn unreadable_save_slot_of_a_callee_saved_register_does_not_end_the_walk() {
    // In F_BP past its prologue the CFI says: CFA = rbp+16, rbp saved at CFA-16, rbx at
    // CFA-24. With rbp = STACK the rbx slot lies 8 bytes below the captured bytes (as the
    // slots of registers an epilogue already popped lie below the stack pointer): rbx is
    // unknown in the caller, but the walk goes on with the return address.
    let m = OneModule(module_info(Tables::Hdr));
    let mut u = Unwinder::new(64);
    let mut s = Stack::new(0x20);
    s.put(0x0, 0).put(0x8, avma(F_ROOT + 0x50));
    let r = regs(avma(F_BP + 0x20), STACK, STACK, 0);
    let (frames, end) = run(&mut u, &m, &r, &s.image());
    assert_eq!(
        (frames, end),
        (
            vec![
                FrameAddr::ip(avma(F_BP + 0x20)),
                FrameAddr::ret(avma(F_ROOT + 0x50))
            ],
            StackEnd::Root
        )
    );
}

#[test]
fn max_frames_zero_and_one() {
    let m = OneModule(module_info(Tables::Hdr));
    let (r, mem) = chain_stack();
    let mut u = Unwinder::new(0);
    assert_eq!(run(&mut u, &m, &r, &mem), (vec![], StackEnd::MaxDepth));
    let mut u = Unwinder::new(1);
    assert_eq!(
        run(&mut u, &m, &r, &mem),
        (vec![FrameAddr::ip(avma(F_LEAF + 0x10))], StackEnd::MaxDepth)
    );
    // Exactly as many frames as the stack has: the root still wins.
    let mut u = Unwinder::new(4);
    assert_eq!(run(&mut u, &m, &r, &mem).1, StackEnd::Root);
}

#[test]
fn not_elf_is_an_error_and_info_is_shareable() {
    assert!(UnwindInfo::from_elf(Bytes::from_owner(b"not an elf".to_vec())).is_err());
    let empty = UnwindInfo::from_elf(Bytes::from_owner(elf(&[]))).unwrap();
    assert!(!empty.has_cfi());
    fn shareable<T: Send + Sync>() {}
    shareable::<UnwindInfo>();
    fn sendable<T: Send>() {}
    sendable::<Unwinder>();
}

#[test]
fn expression_evaluation_edges() {
    use super::eval::{EvalError, EvalRegs, evaluate};
    let mut r = Regs::default();
    r.set(Regs::RSP, STACK);
    let all = EvalRegs {
        regs: &r,
        valid: ALL_VALID,
    };
    let mut s = Stack::new(0x20);
    s.put(8, 0x4242);
    let mem = s.image();
    // DW_OP_call_frame_cfa; DW_OP_lit8; DW_OP_minus (the CFA is also pushed first).
    assert_eq!(
        evaluate(&[0x9c, 0x38, 0x1c], Some(0x9000), &all, 0, &mem),
        Ok(0x9000 - 8)
    );
    // DW_OP_breg7 8; DW_OP_deref
    assert_eq!(evaluate(&[0x77, 8, 0x06], None, &all, 0, &mem), Ok(0x4242));
    // A read outside the captured bytes.
    assert_eq!(
        evaluate(&[0x77, 0x40, 0x06], None, &all, 0, &mem),
        Err(EvalError::Memory)
    );
    // A register whose value is unknown.
    let partial = EvalRegs {
        regs: &r,
        valid: bit(Regs::RBP),
    };
    assert_eq!(
        evaluate(&[0x77, 8], None, &partial, 0, &mem),
        Err(EvalError::Invalid)
    );
    // An endless loop (DW_OP_skip -3) stops at the step limit.
    assert_eq!(
        evaluate(&[0x2f, 0xfd, 0xff], None, &all, 0, &mem),
        Err(EvalError::Invalid)
    );
    // DW_OP_addr is relocated by the bias.
    let mut addr = vec![0x03];
    addr.extend_from_slice(&0x1000u64.to_le_bytes());
    assert_eq!(evaluate(&addr, None, &all, BIAS, &mem), Ok(BIAS + 0x1000));
    // Truncated bytecode.
    assert_eq!(
        evaluate(&[0x77], None, &all, 0, &mem),
        Err(EvalError::Invalid)
    );
}

/// One module plus JIT code outside it, whose bytes the process gives.
struct WithJit(OneModule, u64, Vec<u8>);

impl UnwindModules for WithJit {
    fn find(&self, a: u64) -> Option<ModuleRef<'_>> {
        self.0.find(a)
    }
    fn read_code(&self, a: u64, buf: &mut [u8]) -> bool {
        let Some(off) = a.checked_sub(self.1).map(|o| o as usize) else {
            return false;
        };
        match self.2.get(off..off + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

#[test]
fn jit_trampoline_without_frame_pointer() {
    const JIT: u64 = 0x5000_0000;
    // CPython's perf trampoline: sub $8,%rsp; call *%rcx; add $8,%rsp; ret.
    let tramp = vec![
        0x48, 0x83, 0xec, 0x08, 0xff, 0xd1, 0x48, 0x83, 0xc4, 0x08, 0xc3,
    ];
    let m = WithJit(OneModule(module_info(Tables::Hdr)), JIT, tramp);
    let mut u = Unwinder::new(64);
    let mut s = Stack::new(0x40);
    // The frameless leaf returns into the trampoline, whose caller's return address sits
    // above the 8 bytes it reserved; rbp is garbage (no frame pointers anywhere).
    s.put(0, JIT + 6)
        .put(8, 0xdead)
        .put(16, avma(F_ROOT + 0x10));
    let r = regs(avma(F_LEAF), STACK, 0x77, 0);
    let mut out = Vec::new();
    let end = u.unwind(&r, &s.image(), &m, &mut out);
    assert_eq!(
        out,
        vec![
            FrameAddr::ip(avma(F_LEAF)),
            FrameAddr::ret(JIT + 6),
            FrameAddr::ret(avma(F_ROOT + 0x10)),
        ]
    );
    assert_eq!(end, StackEnd::Root);
    assert_eq!(u.stats().trampoline_steps, 1);

    // Other code before the return address: no trampoline step (the frame pointer chain,
    // here garbage, is all that is left).
    let other = vec![
        0x90, 0x90, 0x90, 0x90, 0x75, 0xfb, 0xff, 0xd6, 0x5d, 0xc3, 0x90,
    ];
    let m = WithJit(OneModule(module_info(Tables::Hdr)), JIT, other);
    let mut u = Unwinder::new(64);
    let end = u.unwind(&r, &s.image(), &m, &mut out);
    assert_eq!((out.len(), end), (2, StackEnd::Unknown));
    assert_eq!(u.stats().trampoline_steps, 0);
}

#[test]
fn jit_leaf_in_its_frame_pointer_prologue() {
    const JIT: u64 = 0x5000_0000;
    // push %rbp; mov %rsp,%rbp; ... sampled at the mov: [rsp] is the saved rbp, the
    // return address is above it, and rbp is still the caller's (garbage: a C caller
    // without frame pointers).
    let code = vec![0x55, 0x48, 0x89, 0xe5, 0x90, 0x5d, 0xc3];
    let m = WithJit(OneModule(module_info(Tables::Hdr)), JIT, code);
    let mut s = Stack::new(0x40);
    s.put(0, 0x77).put(8, avma(F_ROOT + 0x10));
    let r = regs(JIT + 1, STACK, 0x77, 0);
    let mut u = Unwinder::new(64);
    let mut out = Vec::new();
    let end = u.unwind(&r, &s.image(), &m, &mut out);
    assert_eq!(
        out,
        vec![FrameAddr::ip(JIT + 1), FrameAddr::ret(avma(F_ROOT + 0x10))]
    );
    assert_eq!(end, StackEnd::Root);
    // Anywhere else in that code the frame pointer is followed (here: garbage).
    let r = regs(JIT + 4, STACK, 0x77, 0);
    let end = u.unwind(&r, &s.image(), &m, &mut out);
    assert_eq!((out.len(), end), (1, StackEnd::Unknown));
}

#[test]
fn trampoline_shapes() {
    let t = |c: [u8; 9]| super::trampoline_frame_size(&c);
    assert_eq!(t([0, 0, 0, 0x48, 0x83, 0xec, 0x08, 0xff, 0xd1]), Some(8));
    assert_eq!(t([0x48, 0x83, 0xec, 0x18, 0xe8, 1, 2, 3, 4]), Some(0x18));
    assert_eq!(
        t([0, 0, 0, 0x48, 0x83, 0xec, 0x07, 0xff, 0xd1]),
        None,
        "misaligned"
    );
    assert_eq!(
        t([0, 0, 0, 0x48, 0x83, 0xec, 0x88, 0xff, 0xd1]),
        None,
        "negative imm8"
    );
    assert_eq!(
        t([0, 0, 0, 0x48, 0x83, 0xc4, 0x08, 0xff, 0xd1]),
        None,
        "add, not sub"
    );
}

/// A frame-pointer chain of `n` frames 1 KiB apart (code without CFI), ending through a
/// CFI frame at the root.
fn deep_chain(n: u64) -> (Stack, Regs) {
    let mut s = Stack::new(((n + 2) * 1024) as usize);
    for i in 0..n {
        let off = 0x20 + i * 1024;
        s.put(off, STACK + off + 1024)
            .put(off + 8, avma(F_NOCFI + 0x40 + (i % 3)));
    }
    let last = 0x20 + n * 1024;
    s.put(last - 1024 + 8, avma(F_BP + 0x10))
        .put(last, 0)
        .put(last + 8, avma(F_ROOT + 0x10));
    s.put(0, 5);
    (s, regs(avma(F_NOCFI + 0x10), STACK, STACK + 0x20, 0))
}

#[test]
fn walks_reuse_the_outer_frames_of_the_previous_walk() {
    let m = OneModule(module_info(Tables::Hdr));
    let (mut s, r) = deep_chain(100);
    let plain = |s: &Stack, r: &Regs| run(&mut Unwinder::new(512), &m, r, &s.image());
    let (want, want_end) = plain(&s, &r);
    assert_eq!((want.len(), want_end), (102, StackEnd::Root));

    let mut u = Unwinder::new(512);
    let mut memo = WalkMemo::new();
    let mut out = Vec::new();
    // First walk: nothing to reuse.
    let end = u.unwind_reusing(&r, &s.image(), &m, &mut out, &mut memo, 0);
    assert_eq!((&out, end), (&want, want_end));
    assert_eq!(u.stats().reused_frames, 0);

    // The leaf moved on and a frame near it returned to another place: the walk sees the
    // change, then meets the previous walk and copies the rest.
    s.put(0x20 + 3 * 1024 + 8, avma(F_NOCFI + 0x60));
    let r2 = regs(avma(F_NOCFI + 0x18), STACK, STACK + 0x20, 0);
    let (want2, _) = plain(&s, &r2);
    assert_ne!(want2, want);
    let same_from = STACK + 40 * 1024;
    let end = u.unwind_reusing(&r2, &s.image(), &m, &mut out, &mut memo, same_from);
    assert_eq!((&out, end), (&want2, StackEnd::Root));
    let reused = u.stats().reused_frames;
    assert!(
        (50..=62).contains(&reused),
        "reused {reused} of {}",
        out.len()
    );

    // Again, unchanged: reused again, from the memo the last walk left.
    let end = u.unwind_reusing(&r2, &s.image(), &m, &mut out, &mut memo, same_from);
    assert_eq!((&out, end), (&want2, StackEnd::Root));
    assert!(u.stats().reused_frames > reused);

    // Memory not known to be the same (same_from past the top): every frame is walked.
    let before = u.stats().reused_frames;
    let end = u.unwind_reusing(&r, &s.image(), &m, &mut out, &mut memo, u64::MAX);
    assert_eq!(end, StackEnd::Root);
    assert_eq!(u.stats().reused_frames, before);

    // A previous walk cut at the frame limit is not taken as the end of a longer one.
    let mut short = Unwinder::new(60);
    let mut memo = WalkMemo::new();
    assert_eq!(
        short.unwind_reusing(&r2, &s.image(), &m, &mut out, &mut memo, 0),
        StackEnd::MaxDepth
    );
    assert_eq!(out.len(), 60);
    let mut long = Unwinder::new(512);
    let end = long.unwind_reusing(&r2, &s.image(), &m, &mut out, &mut memo, 0);
    assert_eq!((&out, end), (&want2, StackEnd::Root));
    // And a limit reached inside the copied part ends there.
    let mut memo = WalkMemo::new();
    long.unwind_reusing(&r2, &s.image(), &m, &mut out, &mut memo, 0);
    let mut short = Unwinder::new(70);
    let end = short.unwind_reusing(&r2, &s.image(), &m, &mut out, &mut memo, 0);
    assert_eq!((out.as_slice(), end), (&want2[..70], StackEnd::MaxDepth));
    assert!(short.stats().reused_frames > 0);
}
