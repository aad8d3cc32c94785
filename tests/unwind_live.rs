//! Live unwinding of this test process: capture the current thread's registers and stack
//! bytes, describe every executable mapping of /proc/self/maps as a module, unwind with
//! the crate's unwinder and check the frames against this binary's symbols. Covers the
//! main test thread, a deep recursion, a spawned thread and a signal handler.

use std::arch::asm;
use std::hint::black_box;
use std::sync::Mutex;

use bytes::Bytes;
use profiler::types::{FrameAddr, Regs, StackEnd};
use profiler::unwind::memory::StackSnapshot;
use profiler::unwind::{ModuleRef, UnwindInfo, UnwindModules, Unwinder};

/// One line of /proc/self/maps.
#[derive(Debug, Clone)]
struct Mapping {
    start: u64,
    end: u64,
    perms: String,
    offset: u64,
    path: String,
}

fn maps() -> Vec<Mapping> {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap();
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let range = it.next()?;
            let perms = it.next()?.to_string();
            let offset = u64::from_str_radix(it.next()?, 16).ok()?;
            let _dev = it.next()?;
            let _inode = it.next()?;
            let path = it.collect::<Vec<_>>().join(" ");
            let (s, e) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                perms,
                offset,
                path,
            })
        })
        .collect()
}

struct Module {
    start: u64,
    end: u64,
    path: String,
    bias: u64,
    id: u32,
    info: std::sync::Arc<UnwindInfo>,
}

struct Modules(Vec<Module>);

impl UnwindModules for Modules {
    fn find(&self, avma: u64) -> Option<ModuleRef<'_>> {
        self.0
            .iter()
            .find(|m| avma >= m.start && avma < m.end)
            .map(|m| ModuleRef {
                info: &m.info,
                bias: m.bias,
                id: m.id,
            })
    }
}

/// The SVMA of file offset `offset` of an image, through its PT_LOADs.
fn bias_of(image: &[u8], start: u64, offset: u64) -> Option<u64> {
    let facts = profiler::elf::facts(image)?;
    let load = facts
        .loads
        .iter()
        .find(|l| l.exec && offset >= l.offset & !0xfff && offset < l.offset + l.filesz)
        .or_else(|| {
            facts
                .loads
                .iter()
                .find(|l| offset >= l.offset & !0xfff && offset < l.offset + l.filesz)
        })?;
    let svma = load.vaddr.wrapping_sub(load.offset).wrapping_add(offset);
    Some(start.wrapping_sub(svma))
}

fn modules() -> Modules {
    let mut out = Vec::new();
    let mut infos: Vec<(String, std::sync::Arc<UnwindInfo>, Bytes)> = Vec::new();
    for (i, m) in maps().into_iter().enumerate() {
        if !m.perms.contains('x') {
            continue;
        }
        let bytes = if m.path == "[vdso]" {
            // SAFETY: the vDSO mapping of this process is readable for its whole length
            // and stays mapped for the life of the process.
            let image = unsafe {
                std::slice::from_raw_parts(m.start as *const u8, (m.end - m.start) as usize)
            };
            Bytes::from_owner(image.to_vec())
        } else if m.path.starts_with('/') {
            match infos.iter().find(|(p, _, _)| *p == m.path) {
                Some((_, _, b)) => b.clone(),
                None => match std::fs::read(&m.path) {
                    Ok(b) => Bytes::from_owner(b),
                    Err(_) => continue,
                },
            }
        } else {
            continue;
        };
        let info = match infos.iter().find(|(p, _, _)| *p == m.path) {
            Some((_, info, _)) => info.clone(),
            None => {
                let Ok(info) = UnwindInfo::from_elf(bytes.clone()) else {
                    continue;
                };
                let info = std::sync::Arc::new(info);
                infos.push((m.path.clone(), info.clone(), bytes.clone()));
                info
            }
        };
        let Some(bias) = bias_of(&bytes, m.start, m.offset) else {
            continue;
        };
        out.push(Module {
            start: m.start,
            end: m.end,
            path: m.path,
            bias,
            id: i as u32,
            info,
        });
    }
    Modules(out)
}

/// What a capture saw.
struct Capture {
    regs: Regs,
    stack: StackSnapshot,
}

/// Copy this thread's stack from `sp` to the top of its mapping. Runs in a frame below
/// `sp`, so the bytes copied are those of the captured frames.
#[inline(never)]
fn copy_stack(sp: u64) -> StackSnapshot {
    let m = maps()
        .into_iter()
        .find(|m| sp >= m.start && sp < m.end)
        .expect("stack mapping");
    let len = (m.end - sp) as usize;
    // SAFETY: [sp, end) lies inside this thread's own stack mapping, which is readable;
    // the bytes above `sp` belong to live frames of this thread that do not change while
    // this function (running below `sp`) copies them.
    let bytes = unsafe { std::slice::from_raw_parts(sp as *const u8, len) }.to_vec();
    StackSnapshot { start: sp, bytes }
}

/// Capture the registers at a label inside this function and the stack above it.
#[inline(never)]
fn capture() -> Capture {
    let (rip, rsp, rbp, rbx): (u64, u64, u64, u64);
    let (r12, r13, r14, r15): (u64, u64, u64, u64);
    // SAFETY: reads registers only; the label is local to the asm block.
    unsafe {
        asm!(
            "lea {ip}, [rip + 2f]",
            "2:",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            "mov {bx}, rbx",
            ip = out(reg) rip,
            sp = out(reg) rsp,
            bp = out(reg) rbp,
            bx = out(reg) rbx,
            out("r12") r12,
            out("r13") r13,
            out("r14") r14,
            out("r15") r15,
            options(nomem, nostack, preserves_flags),
        );
    }
    let mut regs = Regs::default();
    for (reg, v) in [
        (16, rip),
        (7, rsp),
        (6, rbp),
        (3, rbx),
        (12, r12),
        (13, r13),
        (14, r14),
        (15, r15),
    ] {
        regs.set(reg, v);
    }
    let stack = copy_stack(rsp);
    black_box(Capture { regs, stack })
}

/// Address ranges (AVMA) of this binary's functions whose demangled path is `name`.
fn symbol_ranges(mods: &Modules, name: &str) -> Vec<(u64, u64)> {
    use object::{Object, ObjectSymbol};
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let exe = exe.to_string_lossy().to_string();
    let m = mods
        .0
        .iter()
        .find(|m| m.path == exe)
        .expect("executable mapped");
    let data = std::fs::read(&exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let ranges: Vec<_> = file
        .symbols()
        .filter(|s| s.size() > 0)
        .filter(|s| {
            s.name()
                .map(|n| {
                    let d = format!("{:#}", rustc_demangle::demangle(n));
                    d == name
                })
                .unwrap_or(false)
        })
        .map(|s| (s.address() + m.bias, s.address() + s.size() + m.bias))
        .collect();
    assert!(!ranges.is_empty(), "symbol {name} not found");
    ranges
}

fn count_in(frames: &[FrameAddr], ranges: &[(u64, u64)]) -> usize {
    frames
        .iter()
        .filter(|f| {
            ranges
                .iter()
                .any(|&(s, e)| f.lookup_addr() >= s && f.lookup_addr() < e)
        })
        .count()
}

fn unwind(c: &Capture, mods: &Modules, max: usize) -> (Vec<FrameAddr>, StackEnd, Unwinder) {
    let mut u = Unwinder::new(max);
    let mut frames = Vec::new();
    let end = u.unwind(&c.regs, &c.stack, mods, &mut frames);
    (frames, end, u)
}

fn describe(frames: &[FrameAddr], mods: &Modules) -> String {
    frames
        .iter()
        .map(|f| {
            match mods
                .0
                .iter()
                .find(|m| f.lookup_addr() >= m.start && f.lookup_addr() < m.end)
            {
                Some(m) => format!(
                    "{:#x} {} {}+{:#x}\n",
                    f.addr,
                    f.is_return,
                    m.path,
                    f.addr - m.bias
                ),
                None => format!("{:#x} {} ?\n", f.addr, f.is_return),
            }
        })
        .collect()
}

#[inline(never)]
fn outer_marker() -> Capture {
    black_box(capture())
}

#[test]
fn live_self_unwind_reaches_root() {
    self_unwind_body();
}

#[inline(never)]
fn self_unwind_body() {
    let c = outer_marker();
    let mods = modules();
    let (frames, end, u) = unwind(&c, &mods, 512);
    let text = describe(&frames, &mods);
    if std::env::var_os("UNWIND_TEST_VERBOSE").is_some() {
        println!("{text}");
    }
    assert_eq!(end, StackEnd::Root, "{text}");
    assert!(frames.len() > 5, "{text}");
    assert_eq!(
        count_in(&frames[..1], &symbol_ranges(&mods, "unwind_live::capture")),
        1,
        "{text}"
    );
    assert_eq!(
        count_in(&frames, &symbol_ranges(&mods, "unwind_live::outer_marker")),
        1,
        "{text}"
    );
    assert_eq!(
        count_in(
            &frames,
            &symbol_ranges(&mods, "unwind_live::self_unwind_body")
        ),
        1,
        "{text}"
    );
    assert!(frames[1..].iter().all(|f| f.is_return), "{text}");
    let stats = u.stats();
    assert!(
        stats.cfi_steps as usize >= frames.len() - 1,
        "{stats:?}\n{text}"
    );

    // The vDSO is an image read from memory; it must yield CFI tables too.
    if let Some(vdso) = mods.0.iter().find(|m| m.path == "[vdso]") {
        assert!(vdso.info.has_cfi());
    }
}

#[inline(never)]
fn recurse(depth: u32) -> Capture {
    if depth == 0 {
        return capture();
    }
    let c = recurse(black_box(depth - 1));
    black_box(&c);
    c
}

#[test]
fn live_deep_recursion() {
    let c = recurse(black_box(60));
    let mods = modules();
    let (frames, end, u) = unwind(&c, &mods, 1024);
    let text = describe(&frames, &mods);
    assert_eq!(end, StackEnd::Root, "{text}");
    assert_eq!(
        count_in(&frames, &symbol_ranges(&mods, "unwind_live::recurse")),
        61,
        "{text}"
    );
    // 60 frames share one return address: the rule cache serves them.
    assert!(u.stats().cache_hits >= 59, "{:?}", u.stats());
    // A frame limit cuts the walk.
    let (frames, end, _) = unwind(&c, &mods, 20);
    assert_eq!((frames.len(), end), (20, StackEnd::MaxDepth));
    // A stack copy cut short is reported as truncated.
    let short = Capture {
        regs: c.regs,
        stack: StackSnapshot {
            start: c.stack.start,
            bytes: c.stack.bytes[..2048].to_vec(),
        },
    };
    let (frames, end, _) = unwind(&short, &mods, 1024);
    assert_eq!(end, StackEnd::Truncated, "{}", describe(&frames, &mods));
    assert!(frames.len() > 3);
}

#[test]
fn live_spawned_thread_reaches_clone_root() {
    let c = std::thread::spawn(outer_marker).join().unwrap();
    let mods = modules();
    let (frames, end, _) = unwind(&c, &mods, 512);
    let text = describe(&frames, &mods);
    assert_eq!(end, StackEnd::Root, "{text}");
    assert_eq!(
        count_in(&frames, &symbol_ranges(&mods, "unwind_live::outer_marker")),
        1,
        "{text}"
    );
    // The last frame is in libc (clone3 / start_thread), not in this binary.
    let last = frames.last().unwrap();
    let m = mods
        .0
        .iter()
        .find(|m| last.lookup_addr() >= m.start && last.lookup_addr() < m.end);
    assert!(m.is_some_and(|m| m.path.contains("libc")), "{text}");
}

/// x86_64 `mov $15, %rax; syscall`: the `__restore_rt` trampoline.
const SIGRETURN: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

static SIGNAL_CAPTURE: Mutex<Option<Capture>> = Mutex::new(None);

extern "C" fn on_sigusr1(_sig: libc::c_int) {
    // The signal is raised synchronously by `raise_here`, which holds no lock; the
    // capture allocates, which is fine outside of an interrupted allocator.
    let c = capture();
    *SIGNAL_CAPTURE.lock().unwrap() = Some(c);
}

#[inline(never)]
fn raise_here() {
    // SAFETY: raising a signal whose handler is installed; the handler only captures.
    let rc = unsafe { libc::raise(libc::SIGUSR1) };
    assert_eq!(black_box(rc), 0);
}

#[test]
fn live_unwind_through_signal_handler() {
    // SAFETY: installs a handler for SIGUSR1, which nothing else in this test binary uses.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    raise_here();
    let c = SIGNAL_CAPTURE.lock().unwrap().take().expect("handler ran");
    let mods = modules();
    let (frames, end, u) = unwind(&c, &mods, 512);
    let text = describe(&frames, &mods);
    assert_eq!(end, StackEnd::Root, "{text}");
    assert_eq!(
        count_in(&frames, &symbol_ranges(&mods, "unwind_live::on_sigusr1")),
        1,
        "{text}"
    );
    assert_eq!(
        count_in(&frames, &symbol_ranges(&mods, "unwind_live::raise_here")),
        1,
        "{text}"
    );
    // The handler returns into the sigreturn trampoline; the frame after it is the exact
    // pc where the signal arrived.
    let tramp = frames
        .iter()
        .position(|f| {
            f.is_return
                && mods.find(f.addr).is_some()
                // SAFETY: `f.addr` lies in an executable, file-backed or vDSO mapping of
                // this process (checked through the module list) and the trampoline
                // pattern is read from its first bytes.
                && unsafe { std::ptr::read_unaligned(f.addr as *const [u8; 9]) } == SIGRETURN
        })
        .expect(&text);
    assert!(!frames[tramp + 1].is_return, "{text}");
    let raise_pos = frames
        .iter()
        .position(|f| {
            count_in(
                std::slice::from_ref(f),
                &symbol_ranges(&mods, "unwind_live::raise_here"),
            ) == 1
        })
        .unwrap();
    assert!(raise_pos > tramp, "{text}");
    assert!(u.stats().expr_evals > 0 || u.stats().sigreturn_steps > 0);
}

/// Throughput of repeated unwinds of one live stack (steady state: rules cached).
/// Run with `cargo test --release --test unwind_live -- --ignored --nocapture`.
#[test]
#[ignore]
fn live_unwind_throughput() {
    let c = recurse(black_box(30));
    let mods = modules();
    let mut u = Unwinder::new(1024);
    let mut frames = Vec::with_capacity(1024);
    let n = 100_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        assert_eq!(
            u.unwind(&c.regs, &c.stack, &mods, &mut frames),
            StackEnd::Root
        );
    }
    let dt = t.elapsed();
    println!(
        "{} frames per unwind, {:.2} us per unwind, {:.1} ns per frame, {:?}",
        frames.len(),
        dt.as_secs_f64() * 1e6 / n as f64,
        dt.as_secs_f64() * 1e9 / (n * frames.len()) as f64,
        u.stats()
    );
}

static MAIN_CAPTURE: Mutex<Option<Capture>> = Mutex::new(None);

extern "C" fn on_sigusr2(_sig: libc::c_int) {
    // Runs on the main thread, which waits for test results in a blocking call (or runs
    // this test itself with --test-threads=1): it holds neither this lock nor the
    // allocator's.
    let c = capture();
    *MAIN_CAPTURE.lock().unwrap() = Some(c);
}

/// The main thread, interrupted by a signal wherever it is, unwinds through the signal
/// frame and `main` to `_start`, whose CFI marks the return address undefined.
#[test]
fn live_main_thread_reaches_start() {
    // SAFETY: installs a handler for SIGUSR2 (unused elsewhere in this binary) and sends
    // it to the main thread of this process.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr2 as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
        let pid = libc::getpid();
        assert_eq!(libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGUSR2), 0);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let c = loop {
        if let Some(c) = MAIN_CAPTURE.lock().unwrap().take() {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "handler did not run");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let mods = modules();
    let (frames, end, _) = unwind(&c, &mods, 1024);
    let text = describe(&frames, &mods);
    if std::env::var_os("UNWIND_TEST_VERBOSE").is_some() {
        println!("{text}");
    }
    assert_eq!(end, StackEnd::Root, "{text}");
    assert_eq!(
        count_in(&frames, &symbol_ranges(&mods, "unwind_live::on_sigusr2")),
        1,
        "{text}"
    );
    assert_eq!(
        count_in(&frames, &symbol_ranges(&mods, "main")),
        1,
        "{text}"
    );
    assert_eq!(
        count_in(&frames[frames.len() - 1..], &symbol_ranges(&mods, "_start")),
        1,
        "{text}"
    );
}

/// The unwinder crate states the kernel's signal frame layout without libc; check it.
#[test]
fn sigcontext_layout_matches_libc() {
    assert_eq!(
        std::mem::offset_of!(libc::ucontext_t, uc_mcontext) as u64,
        profiler::unwind::arch::x86_64::UC_MCONTEXT_GREGS
    );
    let order = [
        (libc::REG_R8, 8),
        (libc::REG_R15, 15),
        (libc::REG_RDI, 5),
        (libc::REG_RSI, 4),
        (libc::REG_RBP, 6),
        (libc::REG_RBX, 3),
        (libc::REG_RDX, 1),
        (libc::REG_RAX, 0),
        (libc::REG_RCX, 2),
        (libc::REG_RSP, 7),
        (libc::REG_RIP, 16),
    ];
    for (greg, dwarf) in order {
        assert_eq!(
            profiler::unwind::arch::x86_64::SIGCONTEXT_ORDER[greg as usize],
            dwarf
        );
    }
}
