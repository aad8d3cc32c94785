//! `profiler dump --pid N`: one look at every thread of a process — its name, its state
//! (running, or sleeping in which system call), and its whole stack named down to file and
//! line — for the process that hangs. Capture first, name later: the states are read from
//! `/proc` without stopping anything, then every thread is interrupted at once and each is
//! resumed as soon as its registers and used stack are copied, and all are detached before
//! a single frame is unwound or named (with the session's own unwind stage and namer).
//! A thread that does not stop in time (an uninterruptible sleep) is unwound from the
//! stack pointer and pc the kernel shows for it, and says so.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use serde::Serialize;

use crate::os::files::LiveFiles;
use crate::os::proc::{self, SyscallState};
use crate::os::ptrace::{Missed, Tracer};
use crate::os::{permissions, vm};
use crate::pipeline::naming::Namer;
use crate::pipeline::profile::Store;
use crate::pipeline::unwind::UnwindStage;
use crate::pipeline::{FrameKind, Unwound};
use crate::procmaps;
use crate::source::{Captured, RawSample, SourceEvent};
use crate::target::check_target;
use crate::types::{Pid, Regs, StackEnd, Tid};
use profiler_symbolize::Symbolizer;
use profiler_unwind::StackSnapshot;

/// How long the capture waits for the threads to stop.
const STOP_WAIT: Duration = Duration::from_millis(200);

/// Most stack bytes copied per thread.
const MAX_STACK: usize = 8 << 20;

/// Most frames per stack.
const MAX_FRAMES: usize = 4096;

/// One frame of a dumped stack.
#[derive(Clone, Debug, Serialize)]
pub struct DumpFrame {
    /// Address (the pc of the innermost frame, return addresses above it), as hex.
    pub address: String,
    /// Function, when something names it.
    pub function: Option<String>,
    /// Source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
    /// Inlined into the next frame.
    pub inlined: bool,
    /// Module path.
    pub module: Option<String>,
    /// What a reader sees: the function, `module+0xOFFSET`, or a marker
    /// (`[truncated]`, `[unknown]`, `[max depth]`) where the stack ended early.
    pub label: String,
}

/// One thread.
#[derive(Clone, Debug, Serialize)]
pub struct DumpThread {
    /// Thread id.
    pub tid: Tid,
    /// Its name (`comm`).
    pub name: String,
    /// The kernel's one-letter state (`R`, `S`, `D`, `T`, `t`, `Z`).
    pub state_code: String,
    /// The state in words: `running`, `sleeping`, `disk sleep`, `stopped`, ...
    pub state: String,
    /// The system call it waits in, when blocked in one.
    pub syscall: Option<String>,
    /// Frames, innermost first.
    pub frames: Vec<DumpFrame>,
    /// True when the stack reached the thread's root.
    pub complete: bool,
    /// Anything to know about how the stack was taken.
    pub note: Option<String>,
}

/// A whole dump.
#[derive(Clone, Debug, Serialize)]
pub struct Dump {
    /// The process.
    pub pid: Pid,
    /// Its name.
    pub program: String,
    /// Milliseconds from the first interrupt to the last thread resumed.
    pub capture_ms: f64,
    /// Milliseconds for the whole dump (capture, detach, unwinding and naming).
    pub total_ms: f64,
    /// Every thread, the main one first.
    pub threads: Vec<DumpThread>,
}

/// What was captured of a thread before anything is unwound.
struct Taken {
    regs: Regs,
    stack: Vec<u8>,
    /// The thread's Python frames, read in the same stop (CPython targets).
    python: Option<crate::python::PyRawStack>,
    /// The registers are the kernel's sp and pc only (the thread did not stop).
    partial: bool,
}

/// The kernel's state letter in words.
pub fn state_words(code: char) -> &'static str {
    match code {
        'R' => "running",
        'S' => "sleeping",
        'D' => "disk sleep (uninterruptible)",
        'T' => "stopped",
        't' => "stopped by a tracer",
        'Z' => "zombie",
        'X' => "dead",
        'I' => "idle",
        'P' => "parked",
        'W' => "waking",
        _ => "unknown",
    }
}

/// The name of system call `nr` on this machine.
pub fn syscall_name(nr: i64) -> String {
    u32::try_from(nr)
        .ok()
        .and_then(|n| syscalls::Sysno::new(n as usize))
        .map_or_else(|| format!("syscall {nr}"), |s| s.name().to_string())
}

/// Take the dump of `pid`.
pub fn run(pid: Pid, debug_dirs: &[PathBuf]) -> Result<Dump> {
    let t0 = Instant::now();
    check_target(pid)?;
    let program = proc::process_name(pid).unwrap_or_default();
    // What the kernel says of each thread, before anything is stopped.
    let tids = proc::list_tasks(pid).map_err(|e| anyhow!("reading the threads of {pid}: {e}"))?;
    let mut seen: HashMap<Tid, (char, Option<SyscallState>)> = HashMap::new();
    for &tid in &tids {
        let state = proc::thread_stat(pid, tid).map_or('?', |s| s.state);
        seen.insert(tid, (state, proc::thread_syscall(pid, tid)));
    }
    let maps_text = proc::read_maps(pid).map_err(|e| anyhow!("reading the maps of {pid}: {e}"))?;
    let maps = procmaps::parse(&maps_text);

    // Capture: every thread interrupted at once, each resumed once copied, then detached.
    let mut taken: HashMap<Tid, Taken> = HashMap::new();
    let mut missed: HashMap<Tid, String> = HashMap::new();
    let capture_start = Instant::now();
    // CPython: the interpreter and its thread states, read before the threads stop.
    let mut py = crate::source::python::PyReader::new(pid);
    let (py_target, _) = py.on_maps(&maps);
    py.refresh_threads(&tids, true);
    let mut tracer =
        Tracer::attach(pid).map_err(|e| anyhow!(permissions::explain(pid, e.errno)))?;
    let traced = tracer.threads();
    tracer.sample_many(&traced, STOP_WAIT, |tid, r| match r {
        Ok(regs) => {
            let sp = regs.sp();
            let top =
                procmaps::find_stack(&maps, sp).map_or(sp.saturating_add(64 << 10), |(_, end)| end);
            let mut stack = vec![0u8; (top.saturating_sub(sp) as usize).min(MAX_STACK)];
            let n = vm::read(tid, sp, &mut stack);
            stack.truncate(n);
            taken.insert(
                tid,
                Taken {
                    regs: *regs,
                    stack,
                    python: py.read(tid),
                    partial: false,
                },
            );
        }
        Err(m) => {
            missed.insert(
                tid,
                match m {
                    Missed::Gone => "exited during the dump".to_string(),
                    Missed::GroupStopped => "stopped (SIGSTOP): not interrupted".to_string(),
                    Missed::Timeout => "did not stop within 200 ms".to_string(),
                    Missed::Error(e) => format!("could not be interrupted: {e}"),
                },
            );
        }
    });
    // Threads still waiting for their interrupt (an uninterruptible sleep) are left to
    // the detach, which lets them go.
    for tid in &traced {
        if !taken.contains_key(tid) && !missed.contains_key(tid) {
            missed.insert(*tid, "did not stop within 200 ms".to_string());
        }
    }
    let refused: Vec<(Tid, String)> = tracer
        .refused()
        .into_iter()
        .map(|(t, e)| (t, e.desc().to_string()))
        .collect();
    tracer.detach_all();
    drop(tracer);
    let capture_ms = capture_start.elapsed().as_secs_f64() * 1e3;

    // A thread that could not be stopped: its stack from where the kernel says it waits.
    for tid in missed.keys() {
        if let Some((_, Some(SyscallState::Blocked { sp, pc, .. }))) = seen.get(tid) {
            let mut regs = Regs::default();
            regs.set(Regs::RSP, *sp);
            regs.set(Regs::RIP, *pc);
            let top = procmaps::find_stack(&maps, *sp)
                .map_or(sp.saturating_add(64 << 10), |(_, end)| end);
            let mut stack = vec![0u8; (top.saturating_sub(*sp) as usize).min(MAX_STACK)];
            let n = vm::read(*tid, *sp, &mut stack);
            stack.truncate(n);
            taken.insert(
                *tid,
                Taken {
                    regs,
                    stack,
                    python: None,
                    partial: true,
                },
            );
        }
    }

    // Unwind and name, the target running again.
    // The stage hands stack buffers back and counts bytes in flight for a live source;
    // here nothing is in flight and the buffers are dropped.
    let pool = crate::source::BufferPool::default();
    let in_flight = Arc::new(AtomicUsize::new(usize::MAX / 2));
    let mut unwind = UnwindStage::new(LiveFiles::new(pid), MAX_FRAMES, pool, in_flight)
        .with_reread(move || proc::read_maps(pid).ok())
        .with_python(Box::new(vm::LiveProcess(pid)), false);
    let mut namer = Namer::new(Symbolizer::new(debug_dirs.to_vec()));
    let mut store = Store::new();
    let mut stacks: HashMap<Tid, (Option<u32>, StackEnd)> = HashMap::new();
    let mut handle = |ev: Unwound, store: &mut Store| match ev {
        Unwound::Module(m) => store.add_module(m),
        Unwound::Sample { tid, stack, .. } => {
            let id = store.intern(&stack.frames, stack.end, |k, m| namer.name(k, m));
            stacks.insert(tid, (id, stack.end));
        }
        Unwound::PyCode { id, info } => namer.add_py_code(id, info),
        _ => {}
    };
    unwind.handle(SourceEvent::Maps(maps_text), &mut |u| handle(u, &mut store));
    if let Some(t) = py_target {
        unwind.handle(SourceEvent::Python(t), &mut |u| handle(u, &mut store));
    }
    let mut order: Vec<Tid> = seen.keys().copied().collect();
    order.sort_by_key(|&t| (t != pid, t));
    for &tid in &order {
        if let Some(t) = taken.remove(&tid) {
            let sample = RawSample {
                tid,
                time_ns: 0,
                on_cpu: false,
                python: t.python,
                captured: Captured::Stack {
                    regs: t.regs,
                    stack: StackSnapshot {
                        start: t.regs.sp(),
                        bytes: t.stack,
                    },
                    tail: None,
                },
            };
            unwind.handle(SourceEvent::Sample(sample), &mut |u| handle(u, &mut store));
            if t.partial {
                let why = missed.get(&tid).cloned().unwrap_or_default();
                missed.insert(
                    tid,
                    format!("{why}: stack unwound from the stack pointer and pc /proc shows"),
                );
            }
        }
    }

    let mut threads = Vec::new();
    let mut idx = Vec::new();
    for tid in order {
        let (code, sys) = seen[&tid];
        let syscall = match sys {
            Some(SyscallState::Blocked { nr: Some(nr), .. }) => Some(syscall_name(nr)),
            _ => None,
        };
        let mut frames = Vec::new();
        let mut complete = false;
        if let Some(&(id, end)) = stacks.get(&tid) {
            complete = end.is_complete();
            if let Some(id) = id {
                store.stack_frames(id, &mut idx);
                for &f in &idx {
                    for n in store.names(f).iter() {
                        frames.push(DumpFrame {
                            address: if matches!(n.kind, FrameKind::Marker(_) | FrameKind::Python) {
                                String::new()
                            } else {
                                format!("{:#018x}", n.addr)
                            },
                            function: n.function.as_deref().map(str::to_string),
                            file: n.file.as_deref().map(str::to_string),
                            line: n.line,
                            inlined: n.inlined,
                            module: n.module.as_deref().map(str::to_string),
                            label: n.label.to_string(),
                        });
                    }
                }
            }
        }
        let note = match (missed.get(&tid), refused.iter().find(|(t, _)| *t == tid)) {
            (_, Some((_, e))) => Some(format!("the kernel refused to let the agent trace it: {e}")),
            (Some(m), _) => Some(m.clone()),
            (None, None) if !stacks.contains_key(&tid) => Some("not captured".to_string()),
            _ => None,
        };
        threads.push(DumpThread {
            tid,
            name: proc::thread_name(pid, tid).unwrap_or_default(),
            state_code: code.to_string(),
            state: state_words(code).to_string(),
            syscall,
            frames,
            complete,
            note,
        });
    }
    Ok(Dump {
        pid,
        program,
        capture_ms,
        total_ms: t0.elapsed().as_secs_f64() * 1e3,
        threads,
    })
}

impl fmt::Display for Dump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Process {} ({}): {} threads; each thread stopped only for its own copy, all within {:.1} ms; dump took {:.0} ms",
            self.pid,
            self.program,
            self.threads.len(),
            self.capture_ms,
            self.total_ms
        )?;
        for t in &self.threads {
            writeln!(f)?;
            let waits = match &t.syscall {
                Some(s) => format!("{} in {s}", t.state),
                None => t.state.clone(),
            };
            writeln!(f, "Thread {} \"{}\" ({waits})", t.tid, t.name)?;
            if let Some(n) = &t.note {
                writeln!(f, "    note: {n}")?;
            }
            for (i, fr) in t.frames.iter().enumerate() {
                let place = match (&fr.file, fr.line) {
                    (Some(file), Some(line)) => format!(" at {file}:{line}"),
                    (Some(file), None) => format!(" at {file}"),
                    _ => String::new(),
                };
                let module = fr
                    .module
                    .as_deref()
                    .map(|m| format!(" ({})", m.rsplit('/').next().unwrap_or(m)))
                    .unwrap_or_default();
                writeln!(
                    f,
                    "    #{i:<3} {:<18} {}{}{place}{module}",
                    fr.address,
                    fr.label,
                    if fr.inlined { " [inlined]" } else { "" }
                )?;
            }
            if !t.frames.is_empty() && !t.complete {
                writeln!(f, "    (the stack ends before its root)")?;
            }
        }
        Ok(())
    }
}
