//! Hostile stacks against real modules: the test process's own executable and libraries
//! (from `/proc/self/maps`, read from disk) with random stack bytes and registers, cyclic
//! frame pointers, stack pointers into unmapped memory, misaligned or near `u64::MAX`,
//! and empty snapshots. Every unwind returns, keeps its first frame and stays within the
//! frame limit; walks that cannot go on are marked.

mod hostile_support;

use std::sync::OnceLock;

use hostile_support::{DiskSource, assert_no_panic, config};
use profiler::modules::ModuleMap;
use profiler::procmaps::parse;
use profiler::types::{FrameAddr, Regs, StackEnd};
use profiler::unwind::Unwinder;
use profiler::unwind::memory::{MemoryImage, StackSnapshot};
use proptest::prelude::*;

const MAX_FRAMES: usize = 128;
/// Where the synthetic stacks live: far from anything the test process maps.
const STACK: u64 = 0x7fff_0000_0000 - 0x10_0000;

/// The test process's modules and their executable ranges.
fn modules() -> &'static (ModuleMap, Vec<(u64, u64)>) {
    static M: OnceLock<(ModuleMap, Vec<(u64, u64)>)> = OnceLock::new();
    M.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/self/maps").unwrap();
        let maps = parse(&text);
        let mut mm = ModuleMap::new();
        mm.update(&maps, &DiskSource);
        let exec: Vec<(u64, u64)> = maps
            .iter()
            .filter(|m| m.exec && m.is_file())
            .map(|m| (m.start, m.end))
            .collect();
        assert!(
            mm.all().iter().any(|m| m.unwind.is_some()),
            "no module of the test process has unwind tables"
        );
        (mm, exec)
    })
}

fn code_address(rng: &mut fastrand::Rng, exec: &[(u64, u64)]) -> u64 {
    let (s, e) = exec[rng.usize(..exec.len())];
    rng.u64(s..e)
}

fn unwind_snapshot(label: &str, regs: &Regs, snap: &StackSnapshot) -> (Vec<FrameAddr>, StackEnd) {
    let (mm, _) = modules();
    let mut u = Unwinder::new(MAX_FRAMES);
    let mut out = Vec::new();
    let end = assert_no_panic(label, || u.unwind(regs, snap, mm, &mut out));
    hostile_support::check_unwind(label, regs, &out, end, MAX_FRAMES);
    (out, end)
}

proptest! {
    #![proptest_config(config(256))]

    /// Random stack words (code addresses of the real modules, stack addresses, zeros,
    /// noise) and random registers.
    #[test]
    fn random_stacks_against_real_modules(seed in any::<u64>(), words in 0usize..2048) {
        let (_, exec) = modules();
        let mut rng = fastrand::Rng::with_seed(seed);
        let bytes: Vec<u8> = (0..words)
            .flat_map(|i| {
                let w = match rng.u8(0..5) {
                    0 | 1 => code_address(&mut rng, exec),
                    2 => STACK + 8 * rng.u64(0..words as u64 + 4) + rng.u64(0..2) * (i as u64 % 8),
                    3 => 0,
                    _ => rng.u64(..),
                };
                w.to_le_bytes()
            })
            .collect();
        let mut regs = Regs::default();
        for r in 0..Regs::COUNT as u16 {
            regs.set(r, match rng.u8(0..3) {
                0 => code_address(&mut rng, exec),
                1 => STACK + rng.u64(0..(words as u64 + 1) * 8),
                _ => rng.u64(..),
            });
        }
        regs.set(Regs::RIP, code_address(&mut rng, exec));
        if rng.bool() {
            regs.set(Regs::RSP, STACK + rng.u64(0..64));
        }
        let snap = StackSnapshot { start: STACK, bytes };
        let _ = unwind_snapshot(&format!("seed {seed}"), &regs, &snap);
    }

    /// Stack pointers anywhere (unmapped, misaligned, near the top of memory) over
    /// snapshots that start where the sampler would have started them: at rsp.
    #[test]
    fn wild_stack_pointers(seed in any::<u64>(), sp in prop_oneof![
        any::<u64>(),
        (u64::MAX - 64)..=u64::MAX,
        0u64..64,
        Just(u64::MAX),
    ], len in prop_oneof![Just(0usize), 1usize..64, Just(4096usize)]) {
        let (_, exec) = modules();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut bytes = vec![0u8; len];
        for chunk in bytes.chunks_mut(8) {
            let w = code_address(&mut rng, exec).to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
        let mut regs = Regs::default();
        regs.set(Regs::RIP, code_address(&mut rng, exec));
        regs.set(Regs::RSP, sp);
        regs.set(Regs::RBP, sp.wrapping_add(rng.u64(0..64)));
        // The snapshot may claim to start anywhere, even where its end overflows.
        let start = if sp > u64::MAX - len as u64 { u64::MAX - len as u64 } else { sp };
        let snap = StackSnapshot { start, bytes };
        let _ = unwind_snapshot(&format!("sp {sp:#x}"), &regs, &snap);
    }
}

#[test]
fn empty_snapshot_ends_truncated_or_unknown() {
    let (_, exec) = modules();
    let mut rng = fastrand::Rng::with_seed(1);
    for _ in 0..500 {
        let mut regs = Regs::default();
        regs.set(Regs::RIP, code_address(&mut rng, exec));
        regs.set(Regs::RSP, STACK);
        regs.set(Regs::RBP, STACK + 16);
        let snap = StackSnapshot {
            start: STACK,
            bytes: Vec::new(),
        };
        let (frames, end) = unwind_snapshot("empty", &regs, &snap);
        // Nothing was captured: no caller can be read. (A pc whose CFI says "outermost"
        // or whose rule needs no memory may still end otherwise.)
        assert!(frames.len() <= 2, "{frames:x?} {end:?}");
    }
}

#[test]
fn cyclic_frame_pointers_terminate() {
    let (mm, exec) = modules();
    // A pc in no module, so the frame pointer chain is all there is; frame records that
    // point at themselves, at each other, backwards, and in a long cycle.
    let pc = 0x10_0000u64;
    assert!(mm.find_module(pc).is_none());
    let ret = exec[0].0 + 0x10;
    let mut rng = fastrand::Rng::with_seed(5);
    for (name, links) in [
        ("self", vec![0usize]),
        ("pair", vec![1, 0]),
        ("backwards", vec![1, 2, 0]),
        ("long cycle", (1..64).chain([0]).collect::<Vec<_>>()),
    ] {
        let n = links.len();
        let mut img = MemoryImage::new();
        let mut bytes = vec![0u8; 16 * n];
        for (i, &next) in links.iter().enumerate() {
            bytes[16 * i..16 * i + 8].copy_from_slice(&(STACK + 16 * next as u64).to_le_bytes());
            let r = if rng.bool() { ret } else { pc + 4 };
            bytes[16 * i + 8..16 * i + 16].copy_from_slice(&r.to_le_bytes());
        }
        img.add(STACK, bytes);
        let mut regs = Regs::default();
        regs.set(Regs::RIP, pc);
        regs.set(Regs::RSP, STACK);
        regs.set(Regs::RBP, STACK);
        let mut u = Unwinder::new(MAX_FRAMES);
        let mut out = Vec::new();
        let end = assert_no_panic(name, || u.unwind(&regs, &img, mm, &mut out));
        hostile_support::check_unwind(name, &regs, &out, end, MAX_FRAMES);
        // The chain is followed while it goes up the stack, never around a cycle.
        assert!(
            out.len() <= n + 2,
            "{name}: {} frames for {n} records",
            out.len()
        );
        assert_ne!(end, StackEnd::MaxDepth, "{name}");
    }
}

#[test]
fn real_stack_of_this_thread_unwinds() {
    // A control for the hostile cases: this thread's own stack, captured from its
    // stack pointer, unwinds through the real modules into many frames without a
    // wrong turn (every return address lies in a module).
    let (mm, _) = modules();
    let (regs, snap) = capture_own_stack();
    let mut u = Unwinder::new(MAX_FRAMES);
    let mut out = Vec::new();
    let end = u.unwind(&regs, &snap, mm, &mut out);
    hostile_support::check_unwind("own stack", &regs, &out, end, MAX_FRAMES);
    assert!(out.len() >= 4, "{out:x?} {end:?}");
    for f in &out[..out.len() - 1] {
        assert!(
            mm.find_module(f.lookup_addr()).is_some(),
            "{f:x?} in {out:x?}"
        );
    }
}

/// This thread's registers (pc, rsp, rbp at a call site in this function) and a copy of
/// its stack from rsp up to the end of the thread's stack mapping (at most 256 KiB).
#[inline(never)]
fn capture_own_stack() -> (Regs, StackSnapshot) {
    let (rip, rsp, rbp): (u64, u64, u64);
    // SAFETY: reads three registers into locals; no memory, stack or flags are touched.
    unsafe {
        std::arch::asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) rip,
            sp = out(reg) rsp,
            bp = out(reg) rbp,
            options(nomem, nostack, preserves_flags)
        );
    }
    let maps = parse(&std::fs::read_to_string("/proc/self/maps").unwrap());
    let top = maps
        .iter()
        .find(|m| m.contains(rsp))
        .map_or(rsp + 4096, |m| m.end)
        .min(rsp + (256 << 10));
    let len = (top - rsp) as usize;
    let mut bytes = vec![0u8; len];
    // Through /proc/self/mem, as the agent reads a target: no raw pointer reads.
    use std::os::unix::fs::FileExt;
    let mem = std::fs::File::open("/proc/self/mem").unwrap();
    mem.read_exact_at(&mut bytes, rsp).unwrap();
    let mut regs = Regs::default();
    regs.set(Regs::RIP, rip);
    regs.set(Regs::RSP, rsp);
    regs.set(Regs::RBP, rbp);
    (regs, StackSnapshot { start: rsp, bytes })
}
