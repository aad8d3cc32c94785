//! Hostile ELF files: a small real program (compiled here with `cc -O2 -g`) cut at
//! hundreds of lengths, with bit flips in its ELF, program and section headers, with
//! extreme header fields, and with its sections (CFI, DWARF, symbol tables, notes)
//! replaced by garbage. Every consumer of module bytes is run on each: `elf::facts`,
//! `UnwindInfo::from_elf` followed by unwinds, `Symbolizer::symbolize` and
//! `ModuleMap::update`. Each must return without panicking (not even a panic caught
//! inside the symbolizer), unwinds stay bounded and keep the frames found so far, and a
//! corrupt module is skipped while the others keep working.

mod common;
mod hostile_support;

use std::path::PathBuf;

use bytes::Bytes;
use hostile_support::{
    FakeSource, OneModule, assert_no_panic, config, program_debug_frame, program_eh_frame, section,
    symbol,
};
use object::read::elf::{FileHeader, SectionHeader};
use object::{Endianness, elf};
use profiler::elf::{facts, text_section};
use profiler::modules::ModuleMap;
use profiler::procmaps::parse;
use profiler::symbolize::{ModuleDesc, Symbolizer};
use profiler::types::{FrameAddr, Regs, StackEnd};
use profiler::unwind::Unwinder;
use profiler::unwind::memory::MemoryImage;
use proptest::prelude::*;

/// Where the program is mapped in the synthetic address space.
const BIAS: u64 = 0x5555_5555_4000;
/// Base of the synthetic stack.
const STACK: u64 = 0x7ffc_0000_0000;
const MAX_FRAMES: usize = 64;

/// The program's functions to look up and unwind from.
fn probe_pcs(good: &[u8]) -> Vec<u64> {
    let mut pcs = Vec::new();
    for name in ["leaf", "recurse", "main"] {
        let (addr, size) = symbol(good, name);
        pcs.extend([addr, addr + size / 2, addr + size.saturating_sub(1)]);
    }
    let (_, _, text) = section(good, ".text").unwrap();
    pcs.extend([text, 0, 7, 0x1000, 0xffff_ffff, u64::MAX]);
    pcs
}

/// A stack whose words are a mix of return addresses into the program, stack addresses,
/// zeros and noise.
fn garbage_stack(seed: u64, pcs: &[u64]) -> MemoryImage {
    let mut rng = fastrand::Rng::with_seed(seed);
    let words: Vec<u8> = (0..512)
        .flat_map(|_| {
            let w = match rng.u8(0..4) {
                0 => BIAS
                    .wrapping_add(pcs[rng.usize(..pcs.len())])
                    .wrapping_add(rng.u64(0..16)),
                1 => STACK + 8 * rng.u64(0..512),
                2 => 0,
                _ => rng.u64(..),
            };
            w.to_le_bytes()
        })
        .collect();
    let mut m = MemoryImage::new();
    m.add(STACK, words);
    m
}

fn regs(ip: u64, sp: u64, bp: u64) -> Regs {
    let mut r = Regs::default();
    r.set(Regs::RIP, ip);
    r.set(Regs::RSP, sp);
    r.set(Regs::RBP, bp);
    r
}

const MAPS: &str = "\
555555554000-555555555000 r--p 00000000 fd:01 100 /hostile/prog
555555555000-555555556000 r-xp 00001000 fd:01 100 /hostile/prog
555555556000-555555557000 r--p 00002000 fd:01 100 /hostile/prog
";

/// Run every consumer of module bytes on `data`.
fn exercise(label: &str, data: &[u8], pcs: &[u64], sym: &mut Symbolizer) {
    assert_no_panic(label, || {
        let f = facts(data);
        let _ = text_section(data);
        if let Some(f) = &f {
            for l in &f.loads {
                let _ = f.offset_to_svma(l.offset);
                let _ = f.offset_to_svma(l.offset.wrapping_add(l.filesz));
            }
            let _ = f.offset_to_svma(0x1000);
            let _ = f.offset_to_svma(u64::MAX);
        }

        // Unwind tables on their own.
        if let Some(module) = OneModule::new(data.to_vec(), BIAS) {
            let mut u = Unwinder::new(MAX_FRAMES);
            let mut out = Vec::new();
            for (i, &pc) in pcs.iter().enumerate() {
                let mem = garbage_stack(i as u64, pcs);
                let r = regs(
                    BIAS.wrapping_add(pc),
                    STACK + 8 * (i as u64 % 8),
                    STACK + 64,
                );
                let end = u.unwind(&r, &mem, &module, &mut out);
                hostile_support::check_unwind(label, &r, &out, end, MAX_FRAMES);
            }
        }

        // The symbolizer.
        let desc = ModuleDesc {
            path: "/hostile/prog".into(),
            data: Bytes::from_owner(data.to_vec()),
            build_id: f.as_ref().and_then(|f| f.build_id.clone()),
            root: PathBuf::from("/nonexistent-root").into(),
        };
        let _ = sym.debug_info(&desc);
        for &pc in pcs {
            let _ = sym.symbolize(&desc, pc);
        }

        // The module map, and unwinding through it.
        let mut mm = ModuleMap::new();
        let source = FakeSource(vec![("/hostile/prog".into(), data.to_vec())]);
        mm.update(&parse(MAPS), &source);
        let m = mm
            .find_module(0x5555_5555_5100)
            .unwrap_or_else(|| panic!("{label}: a corrupt module must stay listed"));
        assert!(
            m.unwind.is_some() || m.load_error.is_some(),
            "{label}: neither tables nor an error"
        );
        let mut u = Unwinder::new(MAX_FRAMES);
        let mut out = Vec::new();
        for (i, &pc) in pcs.iter().enumerate() {
            let mem = garbage_stack(100 + i as u64, pcs);
            let r = regs(m.bias.wrapping_add(pc), STACK, STACK + 0x100);
            let end = u.unwind(&r, &mem, &mm, &mut out);
            hostile_support::check_unwind(label, &r, &out, end, MAX_FRAMES);
        }
    });
}

/// Cut points: every length up to 512, the boundaries (and their neighbours) of every
/// section and header table, and an even spread over the rest: several hundred in all.
fn cut_points(data: &[u8]) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..=512).collect();
    let file = object::read::elf::ElfFile64::<Endianness>::parse(data).unwrap();
    let endian = file.endian();
    let header = file.elf_header();
    let mut marks = vec![
        header.e_phoff(endian) as usize,
        header.e_shoff(endian) as usize,
        data.len(),
    ];
    for s in file.elf_section_table().iter() {
        let off = s.sh_offset(endian) as usize;
        marks.extend([off, off + s.sh_size(endian) as usize]);
    }
    for m in marks {
        cuts.extend(m.saturating_sub(2)..=m.saturating_add(2));
    }
    cuts.extend((0..data.len()).step_by(97));
    cuts.retain(|&c| c <= data.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

#[test]
fn truncated_at_every_cut_point() {
    let good = program_eh_frame();
    let pcs = probe_pcs(&good);
    let mut sym = Symbolizer::new(Vec::new());
    let cuts = cut_points(&good);
    assert!(cuts.len() > 600, "{} cut points", cuts.len());
    for &cut in &cuts {
        exercise(&format!("cut at {cut}"), &good[..cut], &pcs, &mut sym);
    }
    // The same for the build whose CFI lives in .debug_frame.
    let good = program_debug_frame();
    let pcs = probe_pcs(&good);
    for cut in cut_points(&good).into_iter().step_by(3) {
        exercise(
            &format!("debug_frame build cut at {cut}"),
            &good[..cut],
            &pcs,
            &mut sym,
        );
    }
}

/// Offsets of the header tables: (e_phoff, phnum * 56, e_shoff, shnum * 64).
fn tables(data: &[u8]) -> (usize, usize, usize, usize) {
    let file = object::read::elf::ElfFile64::<Endianness>::parse(data).unwrap();
    let endian = file.endian();
    let h = file.elf_header();
    (
        h.e_phoff(endian) as usize,
        usize::from(h.e_phnum(endian)) * 56,
        h.e_shoff(endian) as usize,
        usize::from(h.e_shnum(endian)) * 64,
    )
}

#[test]
fn every_bit_of_the_elf_header_flipped() {
    let good = program_eh_frame();
    let pcs = probe_pcs(&good);
    let mut sym = Symbolizer::new(Vec::new());
    for bit in 0..64 * 8 {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        exercise(&format!("ELF header bit {bit}"), &bad, &pcs, &mut sym);
    }
}

/// Little-endian field writers for the surgery below.
fn put_u16(d: &mut [u8], at: usize, v: u16) {
    d[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(d: &mut [u8], at: usize, v: u32) {
    d[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(d: &mut [u8], at: usize, v: u64) {
    d[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

const EXTREMES: [u64; 7] = [
    0,
    1,
    0x7fff_ffff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX - 7,
    u64::MAX,
];

#[test]
fn extreme_header_fields() {
    let good = program_eh_frame();
    let pcs = probe_pcs(&good);
    let mut sym = Symbolizer::new(Vec::new());
    let (phoff, phlen, shoff, shlen) = tables(&good);
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // ELF header: table offsets, counts, entry sizes, string table index.
    for (name, at, width) in [
        ("e_phoff", 32, 8),
        ("e_shoff", 40, 8),
        ("e_phentsize", 54, 2),
        ("e_phnum", 56, 2),
        ("e_shentsize", 58, 2),
        ("e_shnum", 60, 2),
        ("e_shstrndx", 62, 2),
    ] {
        for v in EXTREMES {
            let mut bad = good.clone();
            match width {
                2 => put_u16(&mut bad, at, v as u16),
                _ => put_u64(&mut bad, at, v),
            }
            cases.push((format!("{name}={v:#x}"), bad));
        }
    }
    // Every program header: offset, vaddr, filesz, memsz (also the PT_GNU_EH_FRAME and
    // the executable PT_LOAD the unwinder reads code through).
    for ph in (phoff..phoff + phlen).step_by(56) {
        for (name, at) in [
            ("p_offset", 8),
            ("p_vaddr", 16),
            ("p_filesz", 32),
            ("p_memsz", 40),
        ] {
            for v in EXTREMES {
                let mut bad = good.clone();
                put_u64(&mut bad, ph + at, v);
                cases.push((format!("phdr@{ph:#x} {name}={v:#x}"), bad));
            }
        }
        let mut bad = good.clone();
        put_u32(&mut bad, ph, elf::PT_GNU_EH_FRAME.0);
        cases.push((format!("phdr@{ph:#x} made PT_GNU_EH_FRAME"), bad));
    }
    // Every section header: name, type, addr, offset, size, link, entsize.
    for sh in (shoff..shoff + shlen).step_by(64) {
        for (name, at, width) in [
            ("sh_name", 0, 4),
            ("sh_type", 4, 4),
            ("sh_flags", 8, 8),
            ("sh_addr", 16, 8),
            ("sh_offset", 24, 8),
            ("sh_size", 32, 8),
            ("sh_link", 40, 4),
            ("sh_entsize", 56, 8),
        ] {
            for v in EXTREMES {
                let mut bad = good.clone();
                match width {
                    4 => put_u32(&mut bad, sh + at, v as u32),
                    _ => put_u64(&mut bad, sh + at, v),
                }
                cases.push((format!("shdr@{sh:#x} {name}={v:#x}"), bad));
            }
        }
        // A section claiming to be compressed (SHF_COMPRESSED) over whatever it holds.
        let mut bad = good.clone();
        put_u64(&mut bad, sh + 8, elf::SHF_COMPRESSED.0);
        cases.push((format!("shdr@{sh:#x} SHF_COMPRESSED"), bad));
    }
    assert!(cases.len() > 500, "{} cases", cases.len());
    for (label, data) in &cases {
        exercise(label, data, &pcs, &mut sym);
    }
}

/// Sections whose contents are replaced, in the two builds.
const SECTIONS: [&str; 16] = [
    ".eh_frame",
    ".eh_frame_hdr",
    ".debug_frame",
    ".debug_info",
    ".debug_abbrev",
    ".debug_line",
    ".debug_str",
    ".debug_line_str",
    ".debug_aranges",
    ".debug_rnglists",
    ".debug_loclists",
    ".symtab",
    ".strtab",
    ".dynsym",
    ".dynstr",
    ".note.gnu.build-id",
];

/// The sections of [`SECTIONS`] that `data` has, with their file offset and size.
fn present_sections(data: &[u8]) -> Vec<(&'static str, usize, usize)> {
    SECTIONS
        .iter()
        .filter_map(|&name| section(data, name).map(|(off, len, _)| (name, off, len)))
        .collect()
}

/// Each build has the sections it is built for, and every listed section is in one of
/// them; a section this compiler does not emit is reported as a skip (its damage is not
/// exercised), not passed over in silence.
#[test]
fn listed_sections_are_in_the_builds() {
    let eh = program_eh_frame();
    let df = program_debug_frame();
    let names = |d: &[u8]| -> Vec<&str> { present_sections(d).iter().map(|s| s.0).collect() };
    let (in_eh, in_df) = (names(&eh), names(&df));
    for must in [
        ".eh_frame",
        ".debug_info",
        ".debug_line",
        ".symtab",
        ".dynsym",
    ] {
        assert!(
            in_eh.contains(&must),
            "{must} missing from the eh_frame build: {in_eh:?}"
        );
    }
    assert!(in_df.contains(&".debug_frame"), "{in_df:?}");
    let absent: Vec<&str> = SECTIONS
        .iter()
        .copied()
        .filter(|n| !in_eh.contains(n) && !in_df.contains(n))
        .collect();
    if !absent.is_empty() {
        common::skip(&format!(
            "this compiler emits none of {absent:?}: damage to them is not exercised"
        ));
    }
}

/// `data` with section `name` filled by `fill(i)` for byte `i`; None when absent.
fn refill(data: &[u8], name: &str, fill: impl Fn(usize) -> u8) -> Option<Vec<u8>> {
    let (off, len, _) = section(data, name)?;
    let mut out = data.to_vec();
    for (i, b) in out[off..off + len].iter_mut().enumerate() {
        *b = fill(i);
    }
    Some(out)
}

#[test]
fn sections_filled_with_constants() {
    let mut sym = Symbolizer::new(Vec::new());
    for good in [program_eh_frame(), program_debug_frame()] {
        let pcs = probe_pcs(&good);
        for name in SECTIONS {
            for v in [0x00u8, 0xff, 0x80, 0x7f, 0x01] {
                if let Some(bad) = refill(&good, name, |_| v) {
                    exercise(&format!("{name} all {v:#04x}"), &bad, &pcs, &mut sym);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// One section (of the CFI, DWARF, symbol and note sections the build has) replaced
    /// by random bytes, or randomly damaged (a few bytes changed), in either build. Every
    /// case damages a section: it is drawn from those present.
    #[test]
    fn sections_with_random_bytes(
        which in any::<proptest::sample::Index>(),
        debug_frame_build in any::<bool>(),
        seed in any::<u64>(),
        whole in any::<bool>(),
    ) {
        let good = if debug_frame_build { program_debug_frame() } else { program_eh_frame() };
        let present = present_sections(&good);
        prop_assert!(!present.is_empty(), "no listed section in the build");
        let (name, off, len) = present[which.index(present.len())];
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut bad = good.clone();
        if whole {
            rng.fill(&mut bad[off..off + len]);
        } else {
            for _ in 0..rng.usize(1..8) {
                let i = off + rng.usize(..len.max(1)).min(len.saturating_sub(1));
                bad[i] = rng.u8(..);
            }
        }
        let pcs = probe_pcs(&good);
        let mut sym = Symbolizer::new(Vec::new());
        exercise(&format!("{name} seed {seed} whole {whole}"), &bad, &pcs, &mut sym);
    }

    /// Random bit flips anywhere in the program and section header tables.
    #[test]
    fn header_tables_with_bit_flips(
        seed in any::<u64>(),
        flips in 1usize..6,
        in_sections in any::<bool>(),
    ) {
        let good = program_eh_frame();
        let (phoff, phlen, shoff, shlen) = tables(&good);
        let (start, len) = if in_sections { (shoff, shlen) } else { (phoff, phlen) };
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut bad = good.clone();
        for _ in 0..flips {
            let bit = rng.usize(..len * 8);
            bad[start + bit / 8] ^= 1 << (bit % 8);
        }
        let pcs = probe_pcs(&good);
        let mut sym = Symbolizer::new(Vec::new());
        exercise(&format!("flips seed {seed}"), &bad, &pcs, &mut sym);
    }

    /// Entirely random bytes, with or without a valid ELF header in front.
    #[test]
    fn random_files(
        body in proptest::collection::vec(any::<u8>(), 0..8192),
        elf_header in any::<bool>(),
    ) {
        let good = program_eh_frame();
        let mut data = if elf_header { good[..64].to_vec() } else { Vec::new() };
        data.extend_from_slice(&body);
        let pcs = probe_pcs(&good);
        let mut sym = Symbolizer::new(Vec::new());
        exercise("random file", &data, &pcs, &mut sym);
    }
}

/// A corrupt module is skipped (its frames end the unwind, marked) while a good one
/// beside it keeps unwinding and naming: "skip that module, keep sampling".
#[test]
fn corrupt_module_is_skipped_and_the_others_keep_working() {
    let good = program_eh_frame();
    let (leaf, _) = symbol(&good, "leaf");
    // Truncated, and one with garbage CFI and DWARF.
    let mut garbage = good.clone();
    for name in [".eh_frame", ".eh_frame_hdr", ".debug_info", ".debug_line"] {
        let (off, len, _) = section(&good, name).unwrap();
        fastrand::Rng::with_seed(3).fill(&mut garbage[off..off + len]);
    }
    let maps = "\
555555554000-555555555000 r--p 00000000 fd:01 100 /good/prog
555555555000-555555556000 r-xp 00001000 fd:01 100 /good/prog
555555556000-555555557000 r--p 00002000 fd:01 100 /good/prog
7f0000000000-7f0000001000 r--p 00000000 fd:01 200 /bad/truncated.so
7f0000001000-7f0000002000 r-xp 00001000 fd:01 200 /bad/truncated.so
7f1000000000-7f1000001000 r--p 00000000 fd:01 300 /bad/garbage.so
7f1000001000-7f1000002000 r-xp 00001000 fd:01 300 /bad/garbage.so
";
    let source = FakeSource(vec![
        ("/good/prog".into(), good.clone()),
        ("/bad/truncated.so".into(), good[..100].to_vec()),
        ("/bad/garbage.so".into(), garbage),
    ]);
    let mut mm = ModuleMap::new();
    assert_no_panic("module map", || mm.update(&parse(maps), &source));
    assert_eq!(mm.all().len(), 3);
    let truncated = mm.find_module(0x7f00_0000_1100).unwrap();
    assert!(truncated.load_error.is_some() && truncated.unwind.is_none());
    let prog = mm.find_module(0x5555_5555_5100).unwrap().clone();
    assert!(prog.load_error.is_none());

    let mut sym = Symbolizer::new(Vec::new());
    for bad_ret in [0x7f00_0000_1234u64, 0x7f10_0000_1234] {
        // `leaf` at its entry (CFA = rsp + 8, return address at [rsp]) returning into
        // the corrupt module, whose frame cannot be explained.
        let mut stack = Vec::new();
        stack.extend_from_slice(&bad_ret.to_le_bytes());
        stack.extend_from_slice(&[0xee; 64]);
        let mut mem = MemoryImage::new();
        mem.add(STACK, stack);
        let r = regs(prog.bias + leaf, STACK, 0x1234_5678);
        let mut out = Vec::new();
        let mut u = Unwinder::new(MAX_FRAMES);
        let end = assert_no_panic("unwind", || u.unwind(&r, &mem, &mm, &mut out));
        assert_eq!(
            out,
            vec![FrameAddr::ip(prog.bias + leaf), FrameAddr::ret(bad_ret)]
        );
        assert!(
            matches!(end, StackEnd::Unknown | StackEnd::Truncated),
            "{bad_ret:#x}: {end:?}"
        );
        // The good module is still named.
        let desc = prog.desc.as_ref().unwrap();
        let frames = assert_no_panic("symbolize", || sym.symbolize(desc, leaf));
        assert_eq!(
            frames.last().and_then(|f| f.function.as_deref()),
            Some("leaf")
        );
    }
    // The garbage module's own addresses: named by nothing, without a panic.
    let garbage = mm.find_module(0x7f10_0000_1100).unwrap().clone();
    if let Some(desc) = &garbage.desc {
        assert_no_panic("symbolize garbage", || {
            for a in (0..0x3000u64).step_by(3) {
                let _ = sym.symbolize(desc, a);
            }
        });
    }
}
