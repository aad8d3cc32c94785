//! Command-line arguments exactly as typed (clap derive). Validation and defaults that
//! depend on each other live in `app::AttachConfig::from_args`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A sampling profiler for running Linux processes.
#[derive(Debug, Parser)]
#[command(name = "profiler", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to a running process and sample every thread's stack.
    Attach(Box<AttachArgs>),
    /// Start a program and profile it from its first instruction to its exit; the agent
    /// exits with the program's exit code.
    Record(Box<RecordArgs>),
    /// Show the hottest functions of a running process, live (like `top`); plain text
    /// tables when standard output is not a terminal.
    Top(TopArgs),
    /// Print every thread of a process once: name, state (sleeping in which system call),
    /// and its whole stack with files and lines. For a process that hangs.
    Dump(DumpArgs),
    /// Check whether a process can be profiled from here, and say what to fix.
    Doctor(DoctorArgs),
}

/// `profiler top`.
#[derive(Debug, Args)]
#[command(
    after_help = "%OWN: share of the samples of the last interval in which the function \
    was the innermost frame; %TOTAL: in which it was anywhere on the stack; OWN and TOTAL: \
    the time those samples stand for since the start. Only threads that ran count, unless \
    --idle is given."
)]
pub struct TopArgs {
    /// Process to watch.
    #[arg(long, short = 'p')]
    pub pid: i32,

    /// Samples per second per thread.
    #[arg(long, short = 'F', default_value_t = 100.0)]
    pub frequency: f64,

    /// Seconds between two tables.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,

    /// Stop after this many seconds (default: until Ctrl-C or the process exits).
    #[arg(long, short = 'd')]
    pub duration: Option<f64>,

    /// One row per thread and function, rather than per function of all threads.
    #[arg(long)]
    pub by_thread: bool,

    /// Count waiting threads too (where they wait), not only threads that ran.
    #[arg(long)]
    pub idle: bool,

    /// Most rows per table (default: what fits the terminal, else 20).
    #[arg(long)]
    pub rows: Option<usize>,

    /// Extra directory to search for separate debug files.
    #[arg(long)]
    pub debug_dir: Vec<PathBuf>,
}

/// `profiler dump`.
#[derive(Debug, Args)]
#[command(
    after_help = "Each thread is stopped only while its registers and stack are \
    copied (microseconds), all at once; nothing is unwound or named until every thread runs \
    again and the agent has detached."
)]
pub struct DumpArgs {
    /// Process to dump.
    #[arg(long, short = 'p')]
    pub pid: i32,

    /// Print JSON (one object: the process and its threads with their frames) instead of
    /// text.
    #[arg(long)]
    pub json: bool,

    /// Extra directory to search for separate debug files.
    #[arg(long)]
    pub debug_dir: Vec<PathBuf>,
}

/// `profiler doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Process to check.
    #[arg(long, short = 'p')]
    pub pid: i32,

    /// Extra directory to search for separate debug files.
    #[arg(long)]
    pub debug_dir: Vec<PathBuf>,
}

/// Which stack source samples the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerChoice {
    /// perf_event_open where permitted, else ptrace.
    Auto,
    /// perf_event_open only.
    Perf,
    /// ptrace only.
    Ptrace,
}

/// `profiler attach`.
/// `profiler record [OPTIONS] -- PROGRAM [ARGS...]`: `attach`'s options, without a target.
#[derive(Debug, Args)]
#[command(
    mut_group("target", |g| g.required(false)),
    mut_arg("pid", |a| a.hide(true)),
    mut_arg("pid_file", |a| a.hide(true)),
    mut_arg("process_name", |a| a.hide(true)),
    after_help = "The program's standard input, output and error are left as they are. Ctrl-C \
        in a terminal reaches the program (the agent goes on until it exits); SIGTERM and \
        SIGHUP sent to the agent are passed on to it. The outputs are written when the \
        program exits (or at the end of --duration), and the agent exits with the program's \
        exit code (128 + N when signal N ended it)."
)]
pub struct RecordArgs {
    /// Sampling and output options, as for `attach`.
    #[command(flatten)]
    pub attach: AttachArgs,

    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub command: Vec<String>,
}

/// `profiler attach`.
#[derive(Clone, Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "pid_file", "process_name"])))]
pub struct AttachArgs {
    /// Process to profile (as seen in the agent's PID namespace).
    #[arg(long, short = 'p')]
    pub pid: Option<i32>,

    /// Read the pid from this file; wait for it, and attach again when the process exits
    /// and the file names its successor.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,

    /// Wait for a process with this name (its `comm`, or the file name of its executable),
    /// attach, and attach again to the next one when it exits: a sidecar's lifecycle.
    #[arg(long)]
    pub process_name: Option<String>,

    /// Samples per second per thread.
    #[arg(long, short = 'F', default_value_t = 100.0)]
    pub frequency: f64,

    /// Stop after this many seconds (default: until Ctrl-C, SIGTERM or the target exits).
    #[arg(long, short = 'd')]
    pub duration: Option<f64>,

    /// Where to write the profile; the format follows the name (in any case): `*.folded`
    /// (folded stacks; `-` = standard output), `*.svg` (flame graph), `*.speedscope.json`
    /// (speedscope), `*.pb.gz` (pprof), `*.json.gz` (Firefox Profiler), `*.envelope` or a
    /// directory (`DIR/`: Sentry profile chunks as the exact envelopes that would be sent).
    /// May be given more than once. Local outputs count on-CPU samples only (threads that
    /// ran) unless --idle is given; Sentry chunks are always wall-clock (every thread,
    /// waiting or not).
    #[arg(long, short = 'o')]
    pub output: Vec<PathBuf>,

    /// Count waiting threads too in local outputs (folded, SVG, speedscope, pprof,
    /// Firefox Profiler, top): wall-clock profiles, where a thread blocked in a system call
    /// shows the stack it waits in. Without it only samples of threads that were running
    /// or ready to run count (on-CPU, as perf and py-spy do).
    #[arg(long)]
    pub idle: bool,

    /// Extra directory to search for separate debug files (by build-id and
    /// .gnu_debuglink), besides /usr/lib/debug. May be given more than once.
    #[arg(long)]
    pub debug_dir: Vec<PathBuf>,

    /// Most bytes of stack copied per sample (deeper stacks end in `[truncated]`).
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub max_stack_bytes: usize,

    /// Most frames per stack (deeper stacks end in `[max depth]`).
    #[arg(long, default_value_t = 4096)]
    pub max_frames: usize,

    /// Send profile chunks to this Sentry project (DSN from the project's settings).
    /// Default: the SENTRY_DSN environment variable (an empty one counts as not set).
    #[arg(long)]
    pub dsn: Option<String>,

    /// Release name put on every chunk.
    #[arg(long, env = "SENTRY_RELEASE")]
    pub release: Option<String>,

    /// Environment name put on every chunk.
    #[arg(long, env = "SENTRY_ENVIRONMENT")]
    pub environment: Option<String>,

    /// Seconds of samples per Sentry chunk (at most 65: Sentry rejects longer chunks).
    #[arg(long, default_value_t = 60.0)]
    pub chunk_seconds: f64,

    /// Directory holding chunks not yet accepted by Sentry (sent on the next start); the
    /// agent's own (mode 0700). Default: $STATE_DIRECTORY/spool, else
    /// /var/lib/profiler/spool for root, else $XDG_STATE_HOME/profiler/spool
    /// (~/.local/state/profiler/spool).
    #[arg(long)]
    pub spool_dir: Option<PathBuf>,

    /// Most bytes the spool may hold; the oldest chunks are dropped first.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub spool_max_bytes: u64,

    /// Seconds to keep sending at shutdown; what is left stays in the spool.
    #[arg(long, default_value_t = 10.0)]
    pub flush_timeout: f64,

    /// Write this session's profiler_id to a file (for the app's Sentry SDK to link traces).
    #[arg(long)]
    pub profiler_id_file: Option<PathBuf>,

    /// Mark frames whose module path or function matches as app code (glob with `*`/`?`,
    /// else substring). May be given more than once.
    #[arg(long)]
    pub in_app: Vec<String>,

    /// Mark frames whose module path or function matches as not app code; wins over
    /// `--in-app`. May be given more than once.
    #[arg(long)]
    pub not_in_app: Vec<String>,

    /// How to take samples: `perf` (perf_event_open: the kernel samples without stopping
    /// the target; needs CAP_PERFMON or a low enough kernel.perf_event_paranoid), `ptrace`
    /// (stops each thread briefly; needs only the right to trace it), or `auto`: perf where
    /// the kernel permits it, else ptrace.
    #[arg(long, env = "PROFILER_SAMPLER", value_enum, default_value_t = SamplerChoice::Auto)]
    pub sampler: SamplerChoice,

    /// Keep the sampler thread at normal priority (by default it asks for the lowest
    /// real-time priority when permitted, so ticks stay on time on a busy machine).
    #[arg(long)]
    pub no_realtime: bool,

    /// CPython targets: keep the interpreter's own C frames (libpython's functions, the
    /// `_PyEval_EvalFrameDefault` frames under the Python frames they run) in the stacks.
    /// By default they are left out and Python functions take their place.
    #[arg(long)]
    pub python_internals: bool,

    /// Internal counters in the summary (and the time to the first sample).
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_attach() {
        let cli = Cli::try_parse_from([
            "profiler",
            "attach",
            "--pid",
            "42",
            "-F",
            "1000",
            "--duration",
            "2.5",
            "-o",
            "a.svg",
            "-o",
            "b.folded",
        ])
        .unwrap();
        let Command::Attach(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.pid, Some(42));
        assert_eq!(a.frequency, 1000.0);
        assert_eq!(a.duration, Some(2.5));
        assert_eq!(a.output.len(), 2);
    }

    #[test]
    fn sampler_choice() {
        let parse = |extra: &[&str]| {
            let mut a = vec!["profiler", "attach", "--pid", "1"];
            a.extend_from_slice(extra);
            match Cli::try_parse_from(a).map(|c| c.command) {
                Ok(Command::Attach(a)) => Ok(a.sampler),
                Ok(_) => panic!(),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(parse(&[]), Ok(SamplerChoice::Auto));
        assert_eq!(parse(&["--sampler", "perf"]), Ok(SamplerChoice::Perf));
        assert_eq!(parse(&["--sampler", "ptrace"]), Ok(SamplerChoice::Ptrace));
        let e = parse(&["--sampler", "ebpf"]).unwrap_err();
        assert!(e.contains("possible values: auto, perf, ptrace"), "{e}");
    }

    #[test]
    fn record_takes_the_command_after_dashes() {
        let cli = Cli::try_parse_from([
            "profiler", "record", "-F", "200", "-o", "p.svg", "--", "ls", "-l", "--", "x",
        ])
        .unwrap();
        let Command::Record(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.command, ["ls", "-l", "--", "x"]);
        assert_eq!(r.attach.frequency, 200.0);
        assert_eq!(r.attach.pid, None);
        assert!(Cli::try_parse_from(["profiler", "record"]).is_err());
        assert!(Cli::try_parse_from(["profiler", "record", "--"]).is_err());
    }

    #[test]
    fn pid_is_required() {
        assert!(Cli::try_parse_from(["profiler", "attach"]).is_err());
        assert!(Cli::try_parse_from(["profiler", "attach", "--pid", "x"]).is_err());
        assert!(
            Cli::try_parse_from(["profiler", "attach", "--pid", "1", "--process-name", "x"])
                .is_err(),
            "one target only"
        );
        assert!(Cli::try_parse_from(["profiler", "attach", "--process-name", "svc"]).is_ok());
        assert!(Cli::try_parse_from(["profiler", "attach", "--pid-file", "/run/x.pid"]).is_ok());
    }
}
