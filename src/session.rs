//! One profiling session, wired: the stack source on its own thread, the unwind stage on
//! another, and the naming stage with the sinks on the calling thread.
//!
//! ```text
//! source ─▶ unwind ─▶ name + store ─▶ sinks (folded/SVG, speedscope, pprof, Firefox
//!                                          Profiler, top, Sentry)
//! ```
//!
//! Everything that can fail is done before the first `PTRACE_SEIZE`, so a refusal never
//! leaves a target half-profiled.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::bounded;

use crate::cli::SamplerChoice;
use crate::config::{AttachConfig, Target};
use crate::modules::ModuleSource;
use crate::os::files::LiveFiles;
use crate::os::{permissions, proc, signals};
use crate::perfmap::PerfMap;
use crate::pipeline::naming::{Namer, NamingStage};
use crate::pipeline::unwind::UnwindStage;
use crate::progress::{Reporter, status_text};
use crate::sink::firefox::FirefoxSink;
use crate::sink::folded::FoldedSink;
use crate::sink::pprof::PprofSink;
use crate::sink::speedscope::SpeedscopeSink;
use crate::sink::top::TopSink;
use crate::sink::{SessionInfo, Sink, sentry};
use crate::source::perf::{PerfConfig, PerfSource};
use crate::source::ptrace::{Sampler, SamplerConfig};
use crate::source::{Outbox, StackSource, StopReason};
use crate::summary::{Summary, ThreadLine};
use crate::target::{check_target, wait_for_target};
use crate::types::Pid;
use profiler_symbolize::Symbolizer;

/// Unique frames kept in a session without local outputs before the interning tables
/// start afresh (memory stays bounded in runs of days).
const MAX_FRAMES_KEPT: usize = 200_000;

fn agent_cpu_seconds() -> f64 {
    let r = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF);
    r.map_or(0.0, |r| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(r.user_time()) + t(r.system_time())
    })
}

/// CLOCK_MONOTONIC now, in seconds (the clock `time.monotonic()` and others read).
fn monotonic_seconds() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

/// The local sinks `cfg` asks for (files and the live view).
fn local_sinks(cfg: &AttachConfig, info: &SessionInfo) -> Vec<Box<dyn Sink>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let files = &cfg.files;
    if FoldedSink::wanted(files) {
        sinks.push(Box::new(FoldedSink::new(files.clone(), info.clone())));
    }
    if SpeedscopeSink::wanted(files) {
        sinks.push(Box::new(SpeedscopeSink::new(files.clone(), info.clone())));
    }
    if PprofSink::wanted(files) {
        sinks.push(Box::new(PprofSink::new(files.clone(), info.clone())));
    }
    if FirefoxSink::wanted(files) {
        sinks.push(Box::new(FirefoxSink::new(files.clone(), info.clone())));
    }
    if let Some(top) = &cfg.top {
        sinks.push(Box::new(TopSink::new(info.clone(), top.clone())));
    }
    sinks
}

/// Run one session against `cfg.pid`. `progress` receives one-line progress messages; when
/// `cfg.status_line`, a status line on stderr is kept up to date meanwhile.
pub fn attach(cfg: &AttachConfig, progress: &mut dyn FnMut(&str)) -> Result<Summary> {
    let mut rep = Reporter::new(progress, cfg.status_line);
    attach_reporting(cfg, &mut rep)
}

fn attach_reporting(cfg: &AttachConfig, rep: &mut Reporter<'_>) -> Result<Summary> {
    check_target(cfg.pid)?;
    // A program the agent started has not reached its exec yet: its comm is still ours.
    let name = match &cfg.launched {
        Some(program) => program.clone(),
        None => proc::process_name(cfg.pid).unwrap_or_default(),
    };
    let state_at_start = proc::stat(cfg.pid).map(|s| s.state);
    let wall0 = std::time::SystemTime::now();
    let epoch = Instant::now();

    // The sinks first: their setup (profiler-id file, uploader) can fail, and must do so
    // before the target is touched.
    let info = SessionInfo {
        program: name.clone(),
        pid: cfg.pid,
        frequency: cfg.frequency,
        idle: cfg.idle,
        start: wall0,
    };
    let mut sinks = local_sinks(cfg, &info);
    if let Some(sc) = &cfg.sentry {
        sinks.push(Box::new(sentry::start(sc, cfg.pid, wall0, &mut |m| {
            rep.message(m)
        })?));
    }
    let bounded_memory = cfg.files.is_empty().then_some(MAX_FRAMES_KEPT);
    let naming = NamingStage::new(
        Namer::new(Symbolizer::new(cfg.debug_dirs.clone())),
        sinks,
        bounded_memory,
    );

    // In batches: one per round of the source (see `Outbox`), bounded by the bytes in flight
    // as much as by their number.
    let (src_tx, src_rx) = flume::bounded(1024);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let pool = crate::source::BufferPool::default();
    let (init_tx, init_rx) = bounded(1);
    let scfg = SamplerConfig {
        pid: cfg.pid,
        frequency: cfg.frequency,
        duration: cfg.duration,
        max_stack_bytes: cfg.max_stack_bytes,
        realtime: cfg.realtime,
        launched: cfg.launched.is_some(),
    };
    let pcfg = PerfConfig {
        pid: cfg.pid,
        frequency: cfg.frequency,
        duration: cfg.duration,
        max_stack_bytes: cfg.max_stack_bytes,
        realtime: cfg.realtime,
    };
    let outbox = Outbox::new(src_tx, pool.clone(), in_flight.clone());
    let choice = cfg.sampler;
    let pid = cfg.pid;
    let source = std::thread::Builder::new()
        .name("sampler".into())
        .spawn(
            move || match open_source(choice, pid, pcfg, scfg, outbox, epoch) {
                Ok((s, note)) => {
                    let _ = init_tx.send(Ok((s.thread_count(), note.clone())));
                    let mut stats = s.run();
                    stats.notes.insert(0, note);
                    Some(stats)
                }
                Err(e) => {
                    let _ = init_tx.send(Err(e));
                    None
                }
            },
        )
        .context("starting the sampler thread")?;
    let (threads, sampler_note) = match init_rx.recv() {
        Ok(Ok(n)) => n,
        Ok(Err(message)) => {
            let _ = source.join();
            return Err(anyhow!(message));
        }
        Err(_) => {
            let _ = source.join();
            bail!("the sampler thread failed to start");
        }
    };
    let main_exited = state_at_start.is_some_and(proc::is_exited_state);
    if main_exited {
        rep.message(&format!(
            "the main thread of {} has exited (pthread_exit); its other threads run on and \
             are profiled",
            cfg.pid
        ));
    }
    if cfg.launched.is_some() {
        rep.message(&format!(
            "profiling {} ({name}) from its start at {} Hz{}",
            cfg.pid,
            cfg.frequency,
            cfg.duration
                .map(|d| format!(" for {:.1} s", d.as_secs_f64()))
                .unwrap_or_default()
        ));
    } else {
        rep.message(&format!(
            "attached to {} ({name}): {threads} threads, sampling at {} Hz{}; Ctrl-C to stop",
            cfg.pid,
            cfg.frequency,
            cfg.duration
                .map(|d| format!(" for {:.1} s", d.as_secs_f64()))
                .unwrap_or_default()
        ));
    }
    rep.message(&sampler_note);

    // A few batches: the source's channel and its bound on bytes in flight absorb a
    // naming stage that falls behind, and nothing bounds the frames queued here.
    let (un_tx, un_rx) = flume::bounded(16);
    let pid = cfg.pid;
    let files = LiveFiles::new(pid);
    let perf_map = PerfMap::new(files.root(), proc::ns_pid(pid).unwrap_or(pid));
    let stage = UnwindStage::new(files, cfg.max_frames, pool, in_flight)
        .with_reread(move || proc::read_maps(pid).ok())
        .with_python(
            Box::new(crate::os::vm::LiveProcess(pid)),
            cfg.python_internals,
        );
    let unwinder = std::thread::Builder::new()
        .name("unwinder".into())
        .spawn(move || {
            let _batch = signals::NoWakeupPreemption::begin();
            stage.run(&src_rx, &un_tx)
        })
        .context("starting the unwinder thread")?;

    // This thread names and feeds the sinks from here on (the sampler, started above,
    // keeps its own policy; this one gets its own back when the session ends).
    let _batch = signals::NoWakeupPreemption::begin();
    let mut naming = naming.with_perf_map(perf_map);
    let mut first_sample = cfg.verbose;
    naming.run(&un_rx, |stage, _| {
        let store = stage.store();
        if first_sample && let Some(at) = stage.first_sample() {
            // For benchmarks: the launch-to-first-sample time (unwound, before naming), on a
            // clock other processes share.
            first_sample = false;
            let ago = at.elapsed().as_secs_f64();
            rep.message(&format!(
                "first sample unwound {:.1} ms after start (CLOCK_MONOTONIC {:.6} s)",
                (at - epoch).as_secs_f64() * 1e3,
                monotonic_seconds() - ago
            ));
        }
        rep.status(|| {
            status_text(
                epoch.elapsed().as_secs_f64(),
                store.total_samples(),
                store.on_cpu_samples(),
                store.threads().len(),
                &stage.statuses(),
            )
        });
    });
    rep.clear();
    let sampler_stats = source
        .join()
        .map_err(|_| anyhow!("the sampler thread panicked"))?
        .unwrap_or_default();
    let unwind_stats = unwinder
        .join()
        .map_err(|_| anyhow!("the unwinder thread panicked"))?;
    let stop = sampler_stats.stop.unwrap_or(StopReason::Aborted);
    if stop == StopReason::TargetExited && cfg.launched.is_none() {
        rep.message(&format!(
            "target {} exited; writing what was collected",
            cfg.pid
        ));
    }

    let unnamed = naming.store().unnamed_frames();
    if unnamed >= 5000 {
        // Frames of the file outputs are named now, after the sampling.
        rep.message(&format!("naming {unnamed} frames"));
    }
    let (store, reports, namer) = naming.finish();
    let mut sentry_lines = Vec::new();
    let mut files = Vec::new();
    let mut failures = Vec::new();
    for r in reports {
        sentry_lines.extend(r.lines);
        files.extend(r.files);
        failures.extend(r.failures);
    }
    let threads = store
        .all_threads()
        .map(|(tid, t, exited)| ThreadLine {
            tid,
            name: t.name.clone(),
            samples: t.samples,
            on_cpu: t.on_cpu,
            complete: t.complete,
            exited,
        })
        .collect();
    let mut details = Vec::new();
    if cfg.verbose {
        let ps = &unwind_stats;
        details.push(format!(
            "unwinds {} ({} frames, {:.1} µs each), maps re-read {}, modules {}, captured {}, reused {}, ticks {} (skipped {}), stack bytes {}, realtime {}",
            ps.unwinds,
            ps.frames,
            ps.unwind_time.as_secs_f64() * 1e6 / ps.unwinds.max(1) as f64,
            ps.maps_rereads,
            ps.modules,
            sampler_stats.captured,
            sampler_stats.repeated,
            sampler_stats.ticks,
            sampler_stats.ticks_skipped,
            sampler_stats.stack_bytes,
            sampler_stats.realtime
        ));
        details.push(format!(
            "stack bytes reused from previous samples {}, loaded-object list looked at {} times ({} changed), perf: seam moved {}, off-CPU from switch samples {}, read from /proc {}",
            sampler_stats.stack_bytes_reused,
            sampler_stats.linkmap_checks,
            sampler_stats.linkmap_changes,
            sampler_stats.seam_moved,
            sampler_stats.switch_samples,
            sampler_stats.proc_captures
        ));
        let st = namer.stats();
        let (units, parsed) = namer.lazy_units();
        details.push(format!(
            "symbolizer: {} lookups ({} cached), {} modules loaded, {} DWARF errors; DWARF units parsed on demand: {parsed} of {units}",
            st.lookups, st.cache_hits, st.modules_loaded, st.dwarf_errors
        ));
        for (path, e) in &ps.module_errors {
            details.push(format!("module {path}: {e}"));
        }
    }
    let mut notes = target_notes(cfg.pid, state_at_start, main_exited, &sampler_stats);
    let py = &unwind_stats.python;
    if let Some(interp) = &py.interpreter {
        notes.push(format!(
            "python: {interp}: {} samples with Python frames, {} merged with their native frames, {} fell back to the Python stack alone (eval-loop frames did not match the Python frames), {} Python stacks cut short; code objects read {}, cache hits {}, replaced {}",
            py.samples, py.merged, py.fallback, py.incomplete, py.code_reads, py.code_hits, py.code_stale
        ));
    }
    Ok(Summary {
        pid: cfg.pid,
        name,
        stop,
        samples: store.total_samples(),
        on_cpu: store.on_cpu_samples(),
        idle: cfg.idle,
        complete: store.complete_samples(),
        threads,
        frequency: cfg.frequency,
        top: store.top_functions_counted(10, cfg.idle),
        files,
        agent_cpu: agent_cpu_seconds(),
        sampler: sampler_stats,
        details,
        sentry: sentry_lines,
        retired: store.retired(),
        failures,
        notes,
    })
}

/// Open the stack source `choice` asks for on the calling thread (the one that runs it):
/// for `auto`, perf_event_open where the kernel permits it, else ptrace. Returns the source
/// and a line saying which one runs and why the other does not, or the error to show.
fn open_source(
    choice: SamplerChoice,
    pid: Pid,
    pcfg: PerfConfig,
    scfg: SamplerConfig,
    outbox: Outbox,
    epoch: Instant,
) -> std::result::Result<(Box<dyn StackSource>, String), String> {
    let ptrace = |outbox: Outbox, why_not_perf: String| match Sampler::attach(scfg, outbox, epoch) {
        Ok(s) => Ok((
            Box::new(s) as Box<dyn StackSource>,
            format!(
                "sampler: ptrace (each thread stopped briefly per sample); perf_event_open not used: {why_not_perf}"
            ),
        )),
        Err(e) => Err(permissions::explain(pid, e.errno)),
    };
    match choice {
        SamplerChoice::Ptrace => ptrace(outbox, "--sampler ptrace".into()),
        SamplerChoice::Perf | SamplerChoice::Auto => match PerfSource::open(pcfg, outbox, epoch) {
            Ok(s) => {
                let note = format!(
                    "sampler: perf_event_open (the kernel samples, nothing is stopped; {}); ptrace not used: {}",
                    s.describe(),
                    if choice == SamplerChoice::Perf {
                        "--sampler perf"
                    } else {
                        "perf is permitted"
                    }
                );
                Ok((Box::new(s), note))
            }
            Err(e) if choice == SamplerChoice::Auto => {
                let (refused, outbox) = *e;
                let why = refused.reason.clone();
                ptrace(outbox, refused.reason)
                    .map_err(|e| format!("{e}; perf_event_open was not permitted either: {why}"))
            }
            Err(e) => Err(format!(
                "--sampler perf: perf_event_open on process {pid} refused: {}",
                e.0.reason
            )),
        },
    }
}

/// Summary lines about the target's own state: stopped when the agent came (or during the
/// session), its main thread gone.
fn target_notes(
    pid: Pid,
    state_at_start: Option<char>,
    main_exited: bool,
    s: &crate::source::SourceStats,
) -> Vec<String> {
    let mut notes = Vec::new();
    let resume = format!("resume it with `kill -CONT {pid}`");
    if state_at_start == Some('T') {
        notes.push(if s.ticks_target_stopped >= s.ticks {
            format!(
                "the target was already stopped (SIGSTOP or SIGTSTP) when the agent came and \
                 stayed stopped: a stopped process runs no code, so there was nothing to \
                 sample; {resume}"
            )
        } else {
            format!(
                "the target was already stopped (SIGSTOP or SIGTSTP) when the agent came: \
                 stopped at {} of {} ticks, which have no samples",
                s.ticks_target_stopped, s.ticks
            )
        });
    } else if s.ticks_target_stopped > 0 {
        notes.push(format!(
            "the target was stopped (SIGSTOP or SIGTSTP) at {} of {} ticks, which have no \
             samples",
            s.ticks_target_stopped, s.ticks
        ));
    }
    if main_exited {
        notes.push(
            "its main thread had exited (pthread_exit) before the agent came: the other \
             threads were profiled"
                .to_string(),
        );
    }
    notes
}

/// Without any output the profile is only summarised: say so, and how to keep it.
pub fn say_where_outputs_go(cfg: &AttachConfig, progress: &mut dyn FnMut(&str)) {
    if cfg.files.is_empty() && cfg.sentry.is_none() && cfg.top.is_none() {
        progress(&format!(
            "no --output given: the profile is only summarised at the end; to keep it add \
             -o FILE ({}, or a directory for Sentry envelopes)",
            crate::sink::output::Format::NAMES
        ));
    }
}

/// Run `profiler attach`: once for `--pid`; for `--pid-file` and `--process-name`, wait for
/// the target, profile it until it exits, and wait for the next one, until stopped.
/// `on_summary` gets each session's summary. A session whose outputs could not be written
/// makes the run fail (after its summary).
pub fn run_attach(
    cfg: &AttachConfig,
    progress: &mut dyn FnMut(&str),
    on_summary: &mut dyn FnMut(&Summary),
) -> Result<()> {
    let check = |s: &Summary| -> Result<()> {
        if s.failures.is_empty() {
            Ok(())
        } else {
            bail!(
                "{} output(s) not written: {}",
                s.failures.len(),
                s.failures.join("; ")
            )
        }
    };
    if let Some(sc) = &cfg.sentry {
        sentry::preflight(sc)?;
    }
    say_where_outputs_go(cfg, progress);
    if let Target::Pid(pid) = cfg.target {
        let mut c = cfg.clone();
        c.pid = pid;
        let s = attach(&c, progress)?;
        on_summary(&s);
        return check(&s);
    }
    let mut last: Option<(Pid, u64)> = None;
    loop {
        let Some(pid) = wait_for_target(&cfg.target, last, progress) else {
            return Ok(());
        };
        last = Some((pid, proc::start_time(pid).unwrap_or(0)));
        let mut c = cfg.clone();
        c.pid = pid;
        match attach(&c, progress) {
            Ok(s) => {
                on_summary(&s);
                check(&s)?;
                if s.stop != StopReason::TargetExited {
                    return Ok(());
                }
            }
            // It exited between being found and being seized: look again.
            Err(e) if !proc::proc_dir(pid).exists() => progress(&format!("{e:#}; waiting again")),
            Err(e) => return Err(e),
        }
    }
}
