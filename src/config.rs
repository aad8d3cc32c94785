//! `profiler attach`'s settings: the command line checked and turned into what a session
//! needs, and the outputs opened before the agent gives up its privileges.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

use crate::cli::{AttachArgs, SamplerChoice};
use crate::sink::output;
use crate::types::Pid;
use profiler_sentry::Dsn;

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
    /// Local outputs count waiting threads too (wall-clock), not only threads that ran.
    pub idle: bool,
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
    /// Keep CPython's own frames (`--python-internals`).
    pub python_internals: bool,
    /// Sentry chunks, when a DSN or an envelope output is given.
    pub sentry: Option<SentryConfig>,
    /// Which stack source to use.
    pub sampler: SamplerChoice,
    /// Keep a status line on stderr while sampling (stderr is a terminal).
    pub status_line: bool,
    /// The live view of `profiler top`.
    pub top: Option<crate::sink::top::TopConfig>,
    /// The name of the program the agent started (`profiler record`), stopped before its
    /// first instruction; None when attaching to a running process.
    pub launched: Option<String>,
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

/// The spool directory when `--spool-dir` is not given: `$STATE_DIRECTORY/spool` (systemd's
/// `StateDirectory=`), else `/var/lib/profiler/spool` for root, else
/// `$XDG_STATE_HOME/profiler/spool` or `~/.local/state/profiler/spool`. Never a directory
/// every user can write to, such as `/var/tmp`.
pub fn default_spool_dir(euid: u32, env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf> {
    let absolute = |k: &str| env(k).filter(|v| v.starts_with('/'));
    if let Some(d) = absolute("STATE_DIRECTORY") {
        // systemd may list several, separated by ':'.
        let first = d.split(':').next().unwrap_or(&d).to_string();
        return Ok(PathBuf::from(first).join("spool"));
    }
    if euid == 0 {
        return Ok(PathBuf::from("/var/lib/profiler/spool"));
    }
    if let Some(d) = absolute("XDG_STATE_HOME") {
        return Ok(PathBuf::from(d).join("profiler/spool"));
    }
    if let Some(h) = absolute("HOME") {
        return Ok(PathBuf::from(h).join(".local/state/profiler/spool"));
    }
    bail!(
        "no place for the spool of unsent chunks: the agent is not root and neither \
         STATE_DIRECTORY, XDG_STATE_HOME nor HOME is set; give --spool-dir DIR"
    )
}

/// True for an output that asks for Sentry envelopes: `*.envelope` or a directory.
pub fn is_envelope_output(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("envelope"))
        || p.as_os_str().to_string_lossy().ends_with('/')
        || p.is_dir()
}

impl AttachConfig {
    /// Open the output files now: before the agent gives up its privileges, and so that a
    /// path that cannot be written is found before an hour of sampling rather than after.
    /// (Envelope directories and the spool are checked with the agent's final privileges:
    /// `sink::sentry::preflight`.)
    pub fn open_outputs(&mut self) -> Result<()> {
        self.files = std::sync::Arc::new(output::open_all(&self.outputs)?);
        Ok(())
    }

    /// Check the arguments of `profiler record` (`attach`'s, without a target: the pid is
    /// set once the program is started).
    pub fn for_record(a: &AttachArgs, command: &[String]) -> Result<AttachConfig> {
        if a.pid.is_some() || a.pid_file.is_some() || a.process_name.is_some() {
            bail!(
                "record starts the program given after `--`; --pid, --pid-file and \
                 --process-name are for `profiler attach`"
            );
        }
        let mut a = a.clone();
        a.pid = Some(0);
        let mut cfg = AttachConfig::from_args(&a)?;
        let program = command.first().map(String::as_str).unwrap_or_default();
        cfg.launched = Some(program.rsplit('/').next().unwrap_or(program).to_string());
        // The program waits, stopped before its exec, for the ptrace source to release it:
        // `record` samples with ptrace.
        if cfg.sampler == SamplerChoice::Perf {
            bail!(
                "record samples with ptrace (it starts the program under it); drop --sampler perf"
            );
        }
        cfg.sampler = SamplerChoice::Ptrace;
        Ok(cfg)
    }

    /// The settings of `profiler top`: `attach`'s defaults for `--pid`, with the live view.
    pub fn for_top(t: &crate::cli::TopArgs) -> Result<AttachConfig> {
        use clap::{Args, FromArgMatches};
        if !(t.interval.is_finite() && t.interval >= 0.1) {
            bail!("--interval must be at least 0.1 s (got {})", t.interval);
        }
        let pid = t.pid.to_string();
        let matches = AttachArgs::augment_args(clap::Command::new("top"))
            .try_get_matches_from(["top", "--pid", &pid])?;
        let mut a = AttachArgs::from_arg_matches(&matches)?;
        a.frequency = t.frequency;
        a.duration = t.duration;
        a.idle = t.idle;
        a.debug_dir = t.debug_dir.clone();
        let mut cfg = AttachConfig::from_args(&a)?;
        cfg.top = Some(crate::sink::top::TopConfig {
            interval: Duration::from_secs_f64(t.interval),
            by_thread: t.by_thread,
            rows: t.rows,
            terminal: crate::os::term::stdout_is_terminal(),
        });
        Ok(cfg)
    }

    /// Check the arguments (the environment supplies `SENTRY_DSN` and the default spool).
    pub fn from_args(a: &AttachArgs) -> Result<AttachConfig> {
        Self::from_args_env(a, &|k| std::env::var(k).ok())
    }

    /// [`AttachConfig::from_args`] with the environment given by `env`.
    pub fn from_args_env(
        a: &AttachArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AttachConfig> {
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
                    "--output {}: unknown format; use a name ending in {}, or \
                     *.envelope or a directory ending in / (Sentry envelopes)",
                    o.display(),
                    output::Format::NAMES
                );
            }
        }
        // An empty --dsn is a mistake; an empty SENTRY_DSN means "not set", as in the SDKs.
        let dsn = match (a.dsn.as_deref(), env("SENTRY_DSN")) {
            (Some(d), _) if d.trim().is_empty() => bail!(
                "--dsn is empty: give the project's DSN (https://KEY@HOST/PROJECT_ID), or leave \
                 --dsn out to send nothing to Sentry"
            ),
            (Some(d), _) => Some(d.trim().parse::<Dsn>().map_err(|e| anyhow!("--dsn: {e}"))?),
            (None, Some(d)) if !d.trim().is_empty() => Some(
                d.trim()
                    .parse::<Dsn>()
                    .map_err(|e| anyhow!("SENTRY_DSN: {e}"))?,
            ),
            (None, _) => None,
        };
        let spool_dir = match (&a.spool_dir, &dsn) {
            (Some(d), _) => d.clone(),
            (None, Some(_)) => default_spool_dir(nix::unistd::geteuid().as_raw(), env)?,
            (None, None) => PathBuf::new(),
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
            spool_dir,
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
            idle: a.idle,
            debug_dirs: a.debug_dir.clone(),
            max_stack_bytes: a.max_stack_bytes.max(4096),
            max_frames: a.max_frames,
            verbose: a.verbose,
            realtime: !a.no_realtime,
            python_internals: a.python_internals,
            sentry,
            sampler: a.sampler,
            status_line: false,
            top: None,
            launched: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    const DSN: &str = "https://abcdef0123456789@o1.ingest.sentry.io/42";

    fn config(args: &[&str], vars: &[(&str, &str)]) -> Result<AttachConfig> {
        let mut argv = vec!["profiler", "attach", "--pid", "1"];
        argv.extend(args);
        let Command::Attach(a) = Cli::try_parse_from(argv).unwrap().command else {
            panic!()
        };
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AttachConfig::from_args_env(&a, &move |k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    fn dsn_of(c: &AttachConfig) -> Option<String> {
        c.sentry.as_ref()?.dsn.as_ref().map(|d| d.destination())
    }

    #[test]
    fn empty_dsn_flag_is_an_error_empty_variable_is_unset() {
        for empty in ["", "  "] {
            let e = config(&["--dsn", empty], &[("SENTRY_DSN", DSN)]).unwrap_err();
            assert!(e.to_string().starts_with("--dsn is empty"), "{e}");
            let c = config(&[], &[("SENTRY_DSN", empty)]).unwrap();
            assert!(c.sentry.is_none(), "an empty SENTRY_DSN sends nothing");
        }
        let c = config(&[], &[("SENTRY_DSN", DSN), ("HOME", "/home/u")]).unwrap();
        assert_eq!(dsn_of(&c).as_deref(), Some("o1.ingest.sentry.io/42"));
        // The flag wins over the variable; errors name where the DSN came from.
        let other = "https://k@other.example/7";
        let c = config(&["--dsn", other], &[("SENTRY_DSN", DSN)]).unwrap();
        assert_eq!(dsn_of(&c).as_deref(), Some("other.example/7"));
        let e = config(&[], &[("SENTRY_DSN", "https://k@host")]).unwrap_err();
        assert!(e.to_string().starts_with("SENTRY_DSN: invalid DSN"), "{e}");
        let e = config(&["--dsn", "https://k@host"], &[]).unwrap_err();
        assert!(e.to_string().starts_with("--dsn: invalid DSN"), "{e}");
    }

    #[test]
    fn spool_default_is_the_agents_own() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let d = |uid, vars| default_spool_dir(uid, &env(vars)).map_err(|e| e.to_string());
        assert_eq!(
            d(0, &[("HOME", "/root")]),
            Ok(PathBuf::from("/var/lib/profiler/spool"))
        );
        assert_eq!(
            d(0, &[("STATE_DIRECTORY", "/var/lib/prof:/var/lib/other")]),
            Ok(PathBuf::from("/var/lib/prof/spool"))
        );
        assert_eq!(
            d(1000, &[("XDG_STATE_HOME", "/x/state"), ("HOME", "/home/u")]),
            Ok(PathBuf::from("/x/state/profiler/spool"))
        );
        assert_eq!(
            d(1000, &[("XDG_STATE_HOME", "relative"), ("HOME", "/home/u")]),
            Ok(PathBuf::from("/home/u/.local/state/profiler/spool"))
        );
        assert!(d(1000, &[]).unwrap_err().contains("give --spool-dir"));
        // Only needed with a DSN; --spool-dir wins.
        let c = config(&["--dsn", DSN, "--spool-dir", "/s"], &[]).unwrap();
        assert_eq!(c.sentry.unwrap().spool_dir, PathBuf::from("/s"));
        assert!(config(&["-o", "x/"], &[]).is_ok());
    }
}
