//! Micro-benchmark of unwinding captured stacks: nanoseconds per frame with the unwinder's
//! rule cache warm (one `Unwinder` reused, as the agent does) and cold (a fresh `Unwinder`
//! per pass). The stacks are real: captured once from the fixtures `c_workers` (a dozen
//! frames, no frame pointers) and `deep_recursion` (2000 frames) with the agent's own
//! tracer, then unwound over and over against the fixtures' modules. Needs `make fixtures`.

use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use profiler::modules::ModuleMap;
use profiler::os::files::LiveFiles;
use profiler::os::ptrace::Tracer;
use profiler::os::{proc, vm};
use profiler::procmaps;
use profiler::types::{FrameAddr, Regs, StackEnd};
use profiler::unwind::Unwinder;
use profiler::unwind::memory::StackSnapshot;

const MAX_FRAMES: usize = 4096;
const MAX_STACK: u64 = 8 << 20;

/// A fixture killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stacks captured from one fixture, with the modules to unwind them against.
struct Captured {
    samples: Vec<(Regs, StackSnapshot)>,
    modules: ModuleMap,
    frames: u64,
}

fn fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/bin")
        .join(name);
    assert!(
        p.exists(),
        "{} not found: run `make fixtures` first",
        p.display()
    );
    p
}

/// Start `name args`, let it settle, stop it `count` times `spacing` apart and copy its
/// main thread's registers and stack each time.
fn capture(name: &str, args: &[&str], count: usize, spacing: Duration) -> Captured {
    let mut child = Command::new(fixture(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start fixture");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("read ready line");
    assert!(line.starts_with("ready "), "{name}: {line:?}");
    let running = Running(child);
    let pid = running.0.id() as i32;
    std::thread::sleep(Duration::from_millis(300));

    let maps = procmaps::parse(&proc::read_maps(pid).expect("maps"));
    let mut modules = ModuleMap::new();
    modules.update(&maps, &LiveFiles::new(pid));
    let mut tracer = Tracer::attach(pid).expect("attach (ptrace allowed?)");
    let mut samples = Vec::new();
    for _ in 0..count {
        let s = tracer.sample(pid, |regs| {
            let sp = regs.sp();
            let top = procmaps::find(&maps, sp).map_or(sp + 65536, |m| m.end);
            let mut bytes = vec![0u8; top.saturating_sub(sp).min(MAX_STACK) as usize];
            let n = vm::read(pid, sp, &mut bytes);
            bytes.truncate(n);
            (*regs, StackSnapshot { start: sp, bytes })
        });
        if let Ok(s) = s {
            samples.push(s);
        }
        std::thread::sleep(spacing);
    }
    tracer.detach_all();
    drop(running);
    assert!(!samples.is_empty(), "{name}: no sample captured");

    let mut unwinder = Unwinder::new(MAX_FRAMES);
    let mut out = Vec::new();
    let mut frames = 0;
    for (regs, stack) in &samples {
        let end = unwinder.unwind(regs, stack, &modules, &mut out);
        assert_eq!(
            end,
            StackEnd::Root,
            "{name}: a captured stack does not unwind"
        );
        frames += out.len() as u64;
    }
    Captured {
        samples,
        modules,
        frames,
    }
}

fn unwind_all(u: &mut Unwinder, c: &Captured, out: &mut Vec<FrameAddr>) -> usize {
    let mut n = 0;
    for (regs, stack) in &c.samples {
        black_box(u.unwind(regs, stack, &c.modules, out));
        n += out.len();
    }
    n
}

fn bench_unwind(c: &mut Criterion) {
    profiler::os::signals::block_agent_signals().expect("signal mask");
    let cases = [
        (
            "c_workers",
            capture(
                "c_workers",
                &["--seconds", "30"],
                32,
                Duration::from_millis(3),
            ),
        ),
        (
            "deep_recursion_2000",
            capture(
                "deep_recursion",
                &["--seconds", "30"],
                4,
                Duration::from_millis(3),
            ),
        ),
    ];
    let mut g = c.benchmark_group("unwind");
    for (name, cap) in &cases {
        g.throughput(Throughput::Elements(cap.frames));
        let mut out = Vec::with_capacity(MAX_FRAMES);
        let mut warm = Unwinder::new(MAX_FRAMES);
        g.bench_function(format!("{name}/warm"), |b| {
            b.iter(|| unwind_all(&mut warm, cap, &mut out))
        });
        g.bench_function(format!("{name}/cold"), |b| {
            b.iter_batched_ref(
                || Unwinder::new(MAX_FRAMES),
                |u| unwind_all(u, cap, &mut out),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = bench_unwind
}
criterion_main!(benches);
