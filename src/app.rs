//! The one place that wires threads together: the sampler (tracer) thread, the processor
//! (on the calling thread), and the outputs. Returns a summary for `main` to print.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::bounded;

use crate::chunks::ChunkMaker;
use crate::cli::AttachArgs;
use crate::os::{permissions, proc};
use crate::output;
use crate::processor::Processor;
use crate::sampler::{Sampler, SamplerConfig, SamplerStats, StopReason};
use crate::sink::sentry::{self, UploadConfig, UploadStats, Uploader};
use crate::types::Pid;
use profiler_sentry::{ChunkMeta, Dsn, InAppRules};
use profiler_symbolize::Symbolizer;

/// How the target is named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A pid.
    Pid(Pid),
    /// A file holding the pid.
    PidFile(PathBuf),
    /// A process name.
    Name(String),
}

/// Unique frames kept in a Sentry-only session before the interning tables start afresh.
const MAX_FRAMES_KEPT: usize = 200_000;

/// Validated settings of `profiler attach`.
#[derive(Clone, Debug)]
pub struct AttachConfig {
    /// How the target is named.
    pub target: Target,
    /// The target of the current session.
    pub pid: Pid,
    /// Ticks per second.
    pub frequency: f64,
    /// How long to sample.
    pub duration: Option<Duration>,
    /// Output files, opened by `open_outputs`.
    pub outputs: Vec<PathBuf>,
    /// The opened outputs.
    pub files: std::sync::Arc<Vec<output::OutputFile>>,
    /// Extra debug file directories.
    pub debug_dirs: Vec<PathBuf>,
    /// Stack copy limit.
    pub max_stack_bytes: usize,
    /// Frame limit.
    pub max_frames: usize,
    /// Progress and counters.
    pub verbose: bool,
    /// Real-time priority for the sampler thread when permitted.
    pub realtime: bool,
    /// Sentry chunks, when a DSN or an envelope output is given.
    pub sentry: Option<SentryConfig>,
}

/// Settings of the Sentry side.
#[derive(Clone, Debug)]
pub struct SentryConfig {
    /// Where to send, or None to write files.
    pub dsn: Option<Dsn>,
    /// Directory or `*.envelope` file when there is no DSN.
    pub output: Option<PathBuf>,
    /// Release.
    pub release: Option<String>,
    /// Environment.
    pub environment: Option<String>,
    /// Window length.
    pub chunk_seconds: f64,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool bound.
    pub spool_max_bytes: u64,
    /// Shutdown flush time.
    pub flush_timeout: Duration,
    /// File to write the profiler_id to.
    pub profiler_id_file: Option<PathBuf>,
    /// `--in-app` patterns.
    pub in_app: Vec<String>,
    /// `--not-in-app` patterns.
    pub not_in_app: Vec<String>,
}

/// True for an output that asks for Sentry envelopes: `*.envelope` or a directory.
pub fn is_envelope_output(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "envelope")
        || p.as_os_str().to_string_lossy().ends_with('/')
        || p.is_dir()
}

impl AttachConfig {
    /// Open the output files and create the Sentry directories now: before the agent
    /// gives up its privileges, and so that a path that cannot be written is found before
    /// an hour of sampling rather than after.
    pub fn open_outputs(&mut self) -> Result<()> {
        self.files = std::sync::Arc::new(output::open_all(&self.outputs)?);
        if let Some(sc) = &self.sentry {
            if let Some(o) = sc
                .output
                .as_ref()
                .filter(|o| !o.to_string_lossy().ends_with(".envelope"))
            {
                std::fs::create_dir_all(o).with_context(|| format!("creating {}", o.display()))?;
            }
            if sc.dsn.is_some() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&sc.spool_dir)
                    .with_context(|| format!("creating the spool {}", sc.spool_dir.display()))?;
            }
        }
        Ok(())
    }

    /// Check the arguments.
    pub fn from_args(a: &AttachArgs) -> Result<AttachConfig> {
        if !(a.frequency.is_finite() && a.frequency >= 1.0 && a.frequency <= 20_000.0) {
            bail!(
                "--frequency must be between 1 and 20000 Hz (got {})",
                a.frequency
            );
        }
        let duration = match a.duration {
            Some(d) if !(d.is_finite() && d > 0.0) => {
                bail!("--duration must be positive (got {d})")
            }
            Some(d) => Some(Duration::from_secs_f64(d)),
            None => None,
        };
        let mut envelope_out = None;
        let mut outputs = Vec::new();
        for o in &a.output {
            if is_envelope_output(o) {
                if envelope_out.replace(o.clone()).is_some() {
                    bail!("--output: give at most one envelope file or directory");
                }
            } else if output::format_of(o).is_some() {
                outputs.push(o.clone());
            } else {
                bail!(
                    "--output {}: unknown format; use a name ending in .folded, .svg or \
                     .envelope, or a directory ending in /",
                    o.display()
                );
            }
        }
        let dsn = match a.dsn.as_deref().filter(|d| !d.trim().is_empty()) {
            Some(d) => Some(d.trim().parse::<Dsn>().map_err(|e| anyhow!("--dsn: {e}"))?),
            None => None,
        };
        if !(a.chunk_seconds.is_finite() && a.chunk_seconds >= 1.0 && a.chunk_seconds <= 65.0) {
            bail!("--chunk-seconds must be between 1 and 65 (Sentry rejects chunks over 66 s)");
        }
        if !(a.flush_timeout.is_finite() && a.flush_timeout >= 0.0) {
            bail!("--flush-timeout must be zero or more seconds");
        }
        let sentry = (dsn.is_some() || envelope_out.is_some()).then(|| SentryConfig {
            dsn,
            output: envelope_out,
            release: a.release.clone().filter(|r| !r.is_empty()),
            environment: a.environment.clone().filter(|e| !e.is_empty()),
            chunk_seconds: a.chunk_seconds,
            spool_dir: a.spool_dir.clone(),
            spool_max_bytes: a.spool_max_bytes,
            flush_timeout: Duration::from_secs_f64(a.flush_timeout),
            profiler_id_file: a.profiler_id_file.clone(),
            in_app: a.in_app.clone(),
            not_in_app: a.not_in_app.clone(),
        });
        if a.max_frames < 2 {
            bail!("--max-frames must be at least 2");
        }
        let target = match (&a.pid, &a.pid_file, &a.process_name) {
            (Some(p), _, _) => Target::Pid(*p),
            (_, Some(f), _) => Target::PidFile(f.clone()),
            (_, _, Some(n)) if !n.is_empty() => Target::Name(n.clone()),
            _ => bail!("give --pid, --pid-file or --process-name"),
        };
        Ok(AttachConfig {
            pid: a.pid.unwrap_or(0),
            target,
            frequency: a.frequency,
            duration,
            outputs,
            files: Default::default(),
            debug_dirs: a.debug_dir.clone(),
            max_stack_bytes: a.max_stack_bytes.max(4096),
            max_frames: a.max_frames,
            verbose: a.verbose,
            realtime: !a.no_realtime,
            sentry,
        })
    }
}

/// What a run did, for the closing summary.
#[derive(Debug)]
pub struct Summary {
    /// Target.
    pub pid: Pid,
    /// Target's name.
    pub name: String,
    /// Why sampling stopped.
    pub stop: StopReason,
    /// Sampler counters.
    pub sampler: SamplerStats,
    /// Samples per thread: (tid, name, samples, complete).
    pub threads: Vec<(i32, String, u64, u64)>,
    /// All samples.
    pub samples: u64,
    /// Samples whose stack reached the thread's root.
    pub complete: u64,
    /// Requested rate.
    pub frequency: f64,
    /// Top functions by self samples.
    pub top: Vec<(String, u64)>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Agent CPU time (user + system) in seconds.
    pub agent_cpu: f64,
    /// Verbose counters.
    pub details: Vec<String>,
    /// Sentry lines.
    pub sentry: Vec<String>,
    /// Threads that exited during the session and their samples.
    pub retired: (u64, u64),
}

impl Summary {
    /// Ticks per second achieved.
    pub fn achieved_rate(&self) -> f64 {
        if self.sampler.elapsed > 0.0 {
            self.sampler.ticks as f64 / self.sampler.elapsed
        } else {
            0.0
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stop = match self.stop {
            StopReason::Duration => "duration reached".to_string(),
            StopReason::Signal(s) => format!("{s} received"),
            StopReason::TargetExited => "target exited".to_string(),
            StopReason::Aborted => "aborted".to_string(),
        };
        writeln!(
            f,
            "profiled {} ({}) for {:.2} s: {stop}",
            self.pid, self.name, self.sampler.elapsed
        )?;
        let pct = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        let late = if self.sampler.ticks_skipped > 0 {
            format!(
                "; {} ticks skipped: sampler late{}",
                self.sampler.ticks_skipped,
                if self.sampler.realtime {
                    ""
                } else {
                    ", no real-time priority without CAP_SYS_NICE"
                }
            )
        } else {
            String::new()
        };
        writeln!(
            f,
            "  samples: {} in {} threads; rate {:.1} Hz (asked {:.0} Hz{late}); {:.1}% of stacks reached their root",
            self.samples,
            self.threads.len(),
            self.achieved_rate(),
            self.frequency,
            pct(self.complete, self.samples)
        )?;
        let s = &self.sampler;
        writeln!(
            f,
            "  target pause per sample: p50 {} µs, p99 {} µs; agent CPU {:.2} s ({:.3} s per second); missed {}, dropped {}",
            s.pause_percentile(50.0).unwrap_or(0),
            s.pause_percentile(99.0).unwrap_or(0),
            self.agent_cpu,
            if s.elapsed > 0.0 {
                self.agent_cpu / s.elapsed
            } else {
                0.0
            },
            s.missed,
            s.dropped
        )?;
        writeln!(
            f,
            "  threads seen: {} ({} exited before their first sample)",
            s.threads_seen, s.threads_unsampled
        )?;
        writeln!(f, "  threads:")?;
        for (tid, name, n, c) in self.threads.iter().take(20) {
            writeln!(
                f,
                "    {tid:>8} {name:<20} {n:>8} samples ({:.1}% complete)",
                pct(*c, *n)
            )?;
        }
        if self.threads.len() > 20 {
            writeln!(f, "    ... and {} more", self.threads.len() - 20)?;
        }
        if self.retired.0 > 0 {
            writeln!(
                f,
                "    {} threads that exited: {} samples",
                self.retired.0, self.retired.1
            )?;
        }
        if !self.top.is_empty() {
            writeln!(f, "  top functions (self):")?;
            for (name, n) in &self.top {
                writeln!(f, "    {:>5.1}%  {name}", pct(*n, self.samples))?;
            }
        }
        for l in &self.sentry {
            writeln!(f, "  {l}")?;
        }
        for d in &self.details {
            writeln!(f, "  {d}")?;
        }
        for p in &self.files {
            writeln!(f, "  wrote {}", p.display())?;
        }
        Ok(())
    }
}

/// Checks that need no ptrace: the pid exists, is not us, is not a kernel thread.
pub fn check_target(pid: Pid) -> Result<()> {
    if pid <= 0 {
        bail!("invalid pid {pid}");
    }
    if pid == std::process::id() as Pid {
        bail!("refusing to attach to the profiler's own process ({pid})");
    }
    if !proc::proc_dir(pid).exists() {
        bail!("no such process: {pid}");
    }
    if proc::is_kernel_thread(pid) {
        bail!("process {pid} is a kernel thread: it has no user-space stack to sample");
    }
    if proc::status_field(pid, "Tgid").is_some_and(|t| t != pid.to_string()) {
        let tgid = proc::status_field(pid, "Tgid").unwrap_or_default();
        bail!("{pid} is a thread of process {tgid}: attach to {tgid} to profile every thread");
    }
    Ok(())
}

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

/// Run `profiler attach`. `progress` receives one-line progress messages.
pub fn attach(cfg: &AttachConfig, progress: &mut dyn FnMut(&str)) -> Result<Summary> {
    check_target(cfg.pid)?;
    let name = proc::process_name(cfg.pid).unwrap_or_default();
    let wall0 = std::time::SystemTime::now();
    let epoch = Instant::now();
    let (tx, rx) = bounded(8192);
    let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (pool_tx, pool_rx) = bounded(256);
    let (init_tx, init_rx) = bounded(1);
    let scfg = SamplerConfig {
        pid: cfg.pid,
        frequency: cfg.frequency,
        duration: cfg.duration,
        max_stack_bytes: cfg.max_stack_bytes,
        realtime: cfg.realtime,
        in_flight: in_flight.clone(),
    };
    let sampler = std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || match Sampler::attach(scfg, tx, pool_rx, epoch) {
            Ok(s) => {
                let _ = init_tx.send(Ok(s.thread_count()));
                Some(s.run())
            }
            Err(e) => {
                let _ = init_tx.send(Err(e.errno));
                None
            }
        })
        .context("starting the sampler thread")?;
    let threads = match init_rx.recv() {
        Ok(Ok(n)) => n,
        Ok(Err(errno)) => {
            let _ = sampler.join();
            return Err(anyhow!(permissions::explain(cfg.pid, errno)));
        }
        Err(_) => {
            let _ = sampler.join();
            bail!("the sampler thread failed to start");
        }
    };
    progress(&format!(
        "attached to {} ({name}): {threads} threads, sampling at {} Hz{}; Ctrl-C to stop",
        cfg.pid,
        cfg.frequency,
        cfg.duration
            .map(|d| format!(" for {:.1} s", d.as_secs_f64()))
            .unwrap_or_default()
    ));

    let mut sym = Symbolizer::new(cfg.debug_dirs.clone());
    let mut upload = match &cfg.sentry {
        Some(sc) => Some(start_sentry(sc, cfg.pid, wall0, progress)?),
        None => None,
    };
    let mut processor = Processor::new(cfg.pid, cfg.max_frames, pool_tx, upload.is_some());
    processor.in_flight = in_flight;
    let keep_profile_bounded = cfg.files.is_empty();
    let mut next_report = 10_000_000_000u64;
    let mut first_sample = cfg.verbose;
    processor.run(&rx, |p, t| {
        if first_sample && p.profile.total_samples() > 0 {
            // For benchmarks: the launch-to-first-sample time, on a clock other processes share.
            first_sample = false;
            progress(&format!(
                "first sample unwound {:.1} ms after start (CLOCK_MONOTONIC {:.6} s)",
                epoch.elapsed().as_secs_f64() * 1e3,
                monotonic_seconds()
            ));
        }
        if let Some(u) = &mut upload
            && u.maker.due(t)
        {
            // Without local outputs nothing needs the whole session's stacks: keep memory
            // bounded in runs of days by starting the interning afresh now and then (with
            // the whole window flushed, so no kept sample refers to the old tables).
            let reset = keep_profile_bounded && p.profile.frames().len() > MAX_FRAMES_KEPT;
            let chunks = if reset {
                u.maker.make(p, &mut sym)
            } else {
                u.maker.make_due(p, &mut sym)
            };
            for c in chunks {
                let _ = u.chunks.send(c);
            }
            p.retire_exited();
            if reset {
                p.reset_profile();
                u.maker.reset_frames();
            }
        }
        if t >= next_report {
            next_report += 10_000_000_000;
            progress(&format!(
                "{:.0} s: {} samples, {:.1}% complete stacks",
                t as f64 / 1e9,
                p.profile.total_samples(),
                100.0 * p.profile.complete_samples() as f64
                    / p.profile.total_samples().max(1) as f64
            ));
        }
    });
    let sampler_stats = sampler
        .join()
        .map_err(|_| anyhow!("the sampler thread panicked"))?
        .unwrap_or_default();
    let stop = sampler_stats.stop.unwrap_or(StopReason::Aborted);
    if stop == StopReason::TargetExited {
        progress(&format!(
            "target {} exited; writing what was collected",
            cfg.pid
        ));
    }

    let mut sentry_lines = Vec::new();
    if let Some(mut u) = upload {
        for c in u.maker.make(&mut processor, &mut sym) {
            let _ = u.chunks.send(c);
        }
        drop(u.chunks);
        let stats: UploadStats = u.handle.finish();
        sentry_lines.push(format!(
            "sentry: profiler_id {}; {} chunks with {} samples ({} samples of threads with a single sample in a window left out, as Sentry requires)",
            u.profiler_id, u.maker.chunks, u.maker.samples_in_chunks, u.maker.samples_left_out
        ));
        sentry_lines.push(format!("sentry: {stats}"));
        if let Some(o) = &u.output {
            sentry_lines.push(format!("sentry: envelopes written to {}", o.display()));
        }
    }
    let lines = output::folded_lines(&mut processor, &mut sym);
    output::write_all(
        &cfg.files,
        &lines,
        &format!("profiler: {name} ({})", cfg.pid),
    )?;
    let threads = processor
        .profile
        .threads()
        .iter()
        .map(|(tid, t)| (*tid, t.name.clone(), t.samples, t.complete))
        .collect();
    let mut details = Vec::new();
    if cfg.verbose {
        let ps = &processor.stats;
        details.push(format!(
            "unwinds {} ({} frames, {:.1} µs each), maps re-read {}, modules {}, captured {}, reused {}, ticks {} (skipped {}), stack bytes {}, realtime {}",
            ps.unwinds,
            ps.frames,
            ps.unwind_time.as_secs_f64() * 1e6 / ps.unwinds.max(1) as f64,
            ps.maps_rereads,
            processor.modules.all().len(),
            sampler_stats.captured,
            sampler_stats.repeated,
            sampler_stats.ticks,
            sampler_stats.ticks_skipped,
            sampler_stats.stack_bytes,
            sampler_stats.realtime
        ));
        let st = sym.stats();
        let (units, parsed) = sym.lazy_units();
        details.push(format!(
            "symbolizer: {} lookups ({} cached), {} modules loaded, {} DWARF errors; DWARF units parsed on demand: {parsed} of {units}",
            st.lookups, st.cache_hits, st.modules_loaded, st.dwarf_errors
        ));
        for m in processor.modules.all() {
            if let Some(e) = &m.load_error {
                details.push(format!("module {}: {e}", m.path));
            }
        }
    }
    Ok(Summary {
        pid: cfg.pid,
        name,
        stop,
        samples: processor.profile.total_samples(),
        complete: processor.profile.complete_samples(),
        threads,
        frequency: cfg.frequency,
        top: output::top_functions(&lines, 10),
        files: cfg.outputs.clone(),
        agent_cpu: agent_cpu_seconds(),
        sampler: sampler_stats,
        details,
        sentry: sentry_lines,
        retired: processor.profile.retired(),
    })
}

/// The Sentry side of a session: chunk maker, channel to the uploader, uploader.
struct Upload {
    maker: ChunkMaker,
    chunks: crossbeam_channel::Sender<profiler_sentry::ProfileChunk>,
    handle: sentry::UploaderHandle,
    profiler_id: String,
    output: Option<PathBuf>,
}

fn start_sentry(
    sc: &SentryConfig,
    pid: Pid,
    wall0: std::time::SystemTime,
    progress: &mut dyn FnMut(&str),
) -> Result<Upload> {
    let profiler_id = profiler_sentry::new_profiler_id();
    progress(&format!("profiler_id {profiler_id}"));
    if let Some(f) = &sc.profiler_id_file {
        sentry::write_profiler_id(f, &profiler_id)
            .with_context(|| format!("writing the profiler id to {}", f.display()))?;
    }
    let (tx, rx) = bounded(64);
    let mut ucfg = UploadConfig::new(sc.dsn.clone(), sc.output.clone(), sc.spool_dir.clone());
    ucfg.spool_max_bytes = sc.spool_max_bytes;
    ucfg.flush_timeout = sc.flush_timeout;
    let handle = Uploader::spawn(ucfg, rx).map_err(|e| anyhow!("starting the uploader: {e}"))?;
    let exe = std::fs::read_link(proc::proc_dir(pid).join("exe"))
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
        .unwrap_or_default();
    let in_app = InAppRules::new(&sc.in_app, &sc.not_in_app).with_main_executable(&exe);
    let meta = ChunkMeta {
        profiler_id: profiler_id.clone(),
        release: sc.release.clone(),
        environment: sc.environment.clone(),
    };
    let wall = wall0
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Ok(Upload {
        maker: ChunkMaker::new(meta, in_app, wall, sc.chunk_seconds),
        chunks: tx,
        handle,
        profiler_id,
        output: if sc.dsn.is_some() {
            None
        } else {
            sc.output.clone()
        },
    })
}

/// Run `profiler attach`: once for `--pid`; for `--pid-file` and `--process-name`, wait for
/// the target, profile it until it exits, and wait for the next one, until stopped.
/// `on_summary` gets each session's summary.
pub fn run_attach(
    cfg: &AttachConfig,
    progress: &mut dyn FnMut(&str),
    on_summary: &mut dyn FnMut(&Summary),
) -> Result<()> {
    if let Target::Pid(pid) = cfg.target {
        let mut c = cfg.clone();
        c.pid = pid;
        let s = attach(&c, progress)?;
        on_summary(&s);
        return Ok(());
    }
    let mut last: Option<(Pid, u64)> = None;
    loop {
        let Some(pid) = wait_for_target(&cfg.target, last, progress) else {
            return Ok(());
        };
        last = Some((pid, start_time(pid).unwrap_or(0)));
        let mut c = cfg.clone();
        c.pid = pid;
        match attach(&c, progress) {
            Ok(s) => {
                on_summary(&s);
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

/// A process's start time (clock ticks since boot): with the pid, its identity.
fn start_time(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    // Field 22 (starttime) is the 20th after the parenthesised comm.
    stat[close + 2..].split(' ').nth(19)?.parse().ok()
}

/// Wait for the process `target` names, other than `last` (the one just profiled, by pid
/// and start time). None when the agent is asked to stop meanwhile.
pub fn wait_for_target(
    target: &Target,
    last: Option<(Pid, u64)>,
    progress: &mut dyn FnMut(&str),
) -> Option<Pid> {
    let mut announced = false;
    loop {
        let found = match target {
            Target::Pid(p) => Some(*p),
            Target::PidFile(f) => std::fs::read_to_string(f)
                .ok()
                .and_then(|t| t.trim().parse::<Pid>().ok())
                .filter(|&p| p > 0 && proc::proc_dir(p).exists()),
            Target::Name(n) => find_by_name(n),
        };
        if let Some(p) = found
            && last.is_none_or(|(lp, ls)| lp != p || start_time(p) != Some(ls))
        {
            return Some(p);
        }
        if !announced {
            announced = true;
            let what = match target {
                Target::Pid(p) => format!("process {p}"),
                Target::PidFile(f) => format!("a live process in {}", f.display()),
                Target::Name(n) => format!("a process named {n}"),
            };
            progress(&format!("waiting for {what}"));
        }
        if let crate::os::signals::Wake::Stop(_) =
            crate::os::signals::wait(Duration::from_millis(200))
        {
            return None;
        }
    }
}

/// The oldest process whose `comm` or executable file name is `name` (not the agent, not a
/// kernel thread).
pub fn find_by_name(name: &str) -> Option<Pid> {
    let me = std::process::id() as Pid;
    let comm_name: String = name.chars().take(15).collect();
    let mut best: Option<(u64, Pid)> = None;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<Pid>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let exe_matches = || {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().trim_end_matches(" (deleted)") == name)
            })
        };
        if comm != comm_name && !exe_matches() {
            continue;
        }
        if proc::is_kernel_thread(pid) {
            continue;
        }
        let start = start_time(pid).unwrap_or(u64::MAX);
        if best.is_none_or(|(s, p)| (start, pid) < (s, p)) {
            best = Some((start, pid));
        }
    }
    best.map(|(_, p)| p)
}
