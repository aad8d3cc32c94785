//! The agent attached to the hostile fixtures (`make fixtures`): a million-frame
//! recursion, cyclic frame pointers, stack pointers into unmapped, misaligned and kernel
//! memory, code running from anonymous memory. Each run must exit 0 without a panic,
//! leave the target running and untraced, and mark the affected stacks with the root
//! markers of `profile.rs` (`[unknown]`, `[truncated]`, `[max depth]`).

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{Fixture, tracer_pid};

/// Live tests run one at a time (CPU-bound fixtures on a small machine).
static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn live() -> std::sync::MutexGuard<'static, ()> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Folded stacks as (thread name, frames root first after the thread, count).
type Folded = Vec<(String, Vec<String>, u64)>;

fn read_folded(path: &Path) -> Folded {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let (stack, n) = l.rsplit_once(' ').unwrap();
            let mut frames = stack.split(';').map(str::to_string);
            let thread = frames.next().unwrap();
            (thread, frames.collect(), n.parse().unwrap())
        })
        .collect()
}

/// Attach to `fx` for `secs` at `hz` with `extra` flags; asserts exit 0 without a panic,
/// and that the target still runs, untraced. Returns the folded stacks and stderr.
fn attach(fx: &mut Fixture, secs: f64, hz: u32, extra: &[&str]) -> (Folded, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.folded");
    let mut child = common::ptrace_agent()
        .args(["attach", "--pid", &fx.pid().to_string()])
        .args(["--duration", &secs.to_string(), "-F", &hz.to_string()])
        .arg("--output")
        .arg(&out)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("profiler did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o: Output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "profiler failed ({}): {stderr}",
        o.status
    );
    assert!(!stderr.contains("panicked"), "panic in the agent: {stderr}");
    assert!(
        fx.try_exit_status().is_none(),
        "the target died: {:?}",
        fx.try_exit_status()
    );
    for (tid, _) in fx.threads() {
        assert_eq!(tracer_pid(tid), Some(0), "thread {tid} still traced");
    }
    (read_folded(&out), stderr)
}

/// Samples of thread `name`, and how many of them have a root marker in `markers`.
fn thread_samples(stacks: &Folded, name: &str, markers: &[&str]) -> (u64, u64) {
    let mine = stacks.iter().filter(|(t, _, _)| t == name);
    let total = mine.clone().map(|(_, _, n)| n).sum();
    let marked = mine
        .filter(|(_, f, _)| f.first().is_some_and(|r| markers.contains(&r.as_str())))
        .map(|(_, _, n)| n)
        .sum();
    (total, marked)
}

#[test]
fn million_frame_recursion_is_bounded_and_marked() {
    let _g = live();
    let mut fx = Fixture::spawn("hostile_deep", &[]);
    // Let the recursion reach its leaf (a million calls take a few ms).
    std::thread::sleep(Duration::from_millis(500));

    // Defaults: 8 MiB of stack copied, 4096 frames: the frame limit ends the walk.
    let (stacks, _) = attach(&mut fx, 2.0, 200, &[]);
    let (total, marked) = thread_samples(&stacks, "deep-million", &["[max depth]"]);
    assert!(
        total >= 20,
        "only {total} samples of deep-million: {stacks:?}"
    );
    assert_eq!(
        marked, total,
        "every deep-million stack ends at the frame limit"
    );
    for (t, frames, _) in &stacks {
        if t == "deep-million" {
            // 4096 frames plus the marker, plus inlined frames and the clock read at
            // the leaf end.
            assert!(
                (4097..4097 + 6).contains(&frames.len()),
                "{} frames",
                frames.len()
            );
            assert!(frames.iter().skip(1).take(4000).all(|f| f == "million"));
            assert!(frames.iter().rev().take(6).any(|f| f == "million_leaf"));
        }
    }

    // A small stack copy and a large frame limit: the copy ends the walk.
    let (stacks, _) = attach(
        &mut fx,
        2.0,
        200,
        &["--max-stack-bytes", "65536", "--max-frames", "1000000"],
    );
    let (total, marked) = thread_samples(&stacks, "deep-million", &["[truncated]"]);
    assert!(total >= 20, "only {total} samples: {stacks:?}");
    assert_eq!(
        marked, total,
        "every deep-million stack ends at the copy's end"
    );
    for (t, frames, _) in &stacks {
        if t == "deep-million" {
            // 64 KiB of 16-byte frames.
            assert!(frames.len() <= 65536 / 16 + 2, "{} frames", frames.len());
        }
    }
}

#[test]
fn lying_registers_are_marked_and_sampling_goes_on() {
    let _g = live();
    let mut fx = Fixture::spawn("hostile_stack_tricks", &[]);
    let (stacks, _) = attach(&mut fx, 2.0, 300, &[]);
    for (thread, leaf) in [
        ("cyclic-fp", "cyclic_spin"),
        ("sp-unmapped", "sp_spin"),
        ("sp-odd", "sp_spin"),
    ] {
        let (total, marked) = thread_samples(&stacks, thread, &["[unknown]", "[truncated]"]);
        assert!(total >= 20, "{thread}: only {total} samples: {stacks:?}");
        // Between rounds the thread briefly runs with sane registers (complete stacks);
        // the spinning, almost all of its time, is marked.
        assert!(
            marked * 10 >= total * 8,
            "{thread}: {marked} of {total} marked: {stacks:?}"
        );
        let leaf_samples: u64 = stacks
            .iter()
            .filter(|(t, f, _)| t == thread && f.last().is_some_and(|l| l == leaf))
            .map(|(_, _, n)| n)
            .sum();
        assert!(
            leaf_samples * 10 >= total * 8,
            "{thread}: the pc is still named ({leaf_samples} of {total}): {stacks:?}"
        );
    }
    // The cyclic chain is never followed around: a handful of frames at most.
    for (t, frames, _) in &stacks {
        if t == "cyclic-fp" {
            assert!(frames.len() <= 8, "{frames:?}");
        }
    }
}

#[test]
fn stack_pointer_in_kernel_space() {
    let _g = live();
    let mut fx = Fixture::spawn("hostile_stack_tricks", &["--kernel-sp"]);
    let (stacks, _) = attach(&mut fx, 1.5, 300, &[]);
    let (total, marked) = thread_samples(&stacks, "sp-kernel", &["[unknown]", "[truncated]"]);
    assert!(total >= 20, "only {total} samples: {stacks:?}");
    assert!(marked * 10 >= total * 8, "{marked} of {total}: {stacks:?}");
}

#[test]
fn code_in_anonymous_memory() {
    let _g = live();
    let mut fx = Fixture::spawn("hostile_jit", &[]);
    let (stacks, _) = attach(&mut fx, 2.0, 300, &[]);
    let jit = |f: &String| f.starts_with("[unknown]+0x");

    // Frameless JIT code: the return address at rsp leads back into the program, and the
    // stack is complete down to the thread's start.
    let leaf: Vec<_> = stacks.iter().filter(|(t, _, _)| t == "jit-leaf").collect();
    let total: u64 = leaf.iter().map(|(_, _, n)| n).sum();
    assert!(total >= 20, "only {total} samples: {stacks:?}");
    let through: u64 = leaf
        .iter()
        .filter(|(_, f, _)| {
            f.last().is_some_and(jit)
                && f.iter().any(|x| x == "jit_caller_leaf")
                && f.first().is_some_and(|r| !r.starts_with('['))
        })
        .map(|(_, _, n)| n)
        .sum();
    assert!(through * 10 >= total * 8, "{through} of {total}: {leaf:?}");

    // JIT code that hides its caller: the JIT frame, then `[unknown]`.
    let (total, marked) = thread_samples(&stacks, "jit-opaque", &["[unknown]", "[truncated]"]);
    assert!(total >= 20, "only {total} samples: {stacks:?}");
    assert!(marked * 10 >= total * 8, "{marked} of {total}: {stacks:?}");
    assert!(
        stacks
            .iter()
            .any(|(t, f, _)| t == "jit-opaque" && f.last().is_some_and(jit)),
        "{stacks:?}"
    );
}
