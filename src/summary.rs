//! The closing summary of a session: what was sampled, how well, at what cost, and where
//! it went.

use std::fmt;
use std::path::PathBuf;

use crate::source::{SourceStats, StopReason};
use crate::types::Pid;

/// One thread in the summary's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadLine {
    /// Thread id.
    pub tid: i32,
    /// Latest name.
    pub name: String,
    /// Samples (wall-clock: running or waiting).
    pub samples: u64,
    /// Samples taken while it ran or was ready to run.
    pub on_cpu: u64,
    /// Samples whose stack reached its root.
    pub complete: u64,
    /// It exited during the session.
    pub exited: bool,
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
    /// The source's counters.
    pub sampler: SourceStats,
    /// Every thread sampled, exited ones included.
    pub threads: Vec<ThreadLine>,
    /// All samples.
    pub samples: u64,
    /// Samples of threads that ran or were ready to run.
    pub on_cpu: u64,
    /// Local outputs and `top` count waiting threads too (`--idle`).
    pub idle: bool,
    /// Samples whose stack reached the thread's root.
    pub complete: u64,
    /// Requested rate.
    pub frequency: f64,
    /// Top functions by self samples (of on-CPU samples, or of all with `idle`).
    pub top: Vec<(String, u64)>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Agent CPU time (user + system) in seconds.
    pub agent_cpu: f64,
    /// Verbose counters.
    pub details: Vec<String>,
    /// Sentry lines.
    pub sentry: Vec<String>,
    /// Threads that exited during the session and are no longer listed one by one, with
    /// their samples.
    pub retired: (u64, u64),
    /// Outputs that could not be written, with the reason.
    pub failures: Vec<String>,
    /// What was unusual about the target (stopped when the agent came, its main thread
    /// gone), one line each.
    pub notes: Vec<String>,
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
        let threads = self.threads.len() as u64 + self.retired.0;
        let exited = self.threads.iter().filter(|t| t.exited).count() as u64 + self.retired.0;
        writeln!(
            f,
            "  samples: {} in {threads} threads{}; rate {:.1} Hz (asked {:.0} Hz{late}); {:.1}% of stacks reached their root",
            self.samples,
            if exited > 0 {
                format!(" ({exited} exited)")
            } else {
                String::new()
            },
            self.achieved_rate(),
            self.frequency,
            pct(self.complete, self.samples)
        )?;
        writeln!(
            f,
            "  {}",
            if self.idle {
                format!(
                    "wall-clock (--idle): local outputs count all {} samples, waiting threads included ({} on-CPU)",
                    self.samples, self.on_cpu
                )
            } else {
                format!(
                    "on-CPU: local outputs count the {} samples of threads that ran ({:.1}%); --idle adds the {} of waiting threads",
                    self.on_cpu,
                    pct(self.on_cpu, self.samples),
                    self.samples - self.on_cpu.min(self.samples)
                )
            }
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
        for n in s.notes.iter().chain(&self.notes) {
            writeln!(f, "  {n}")?;
        }
        if !s.threads_refused.is_empty() {
            let list: Vec<String> = s
                .threads_refused
                .iter()
                .take(5)
                .map(|(tid, e)| format!("{tid} ({e})"))
                .collect();
            writeln!(
                f,
                "  threads the kernel would not let the agent trace, left out: {} ({}{})",
                s.threads_refused.len(),
                list.join(", "),
                if s.threads_refused.len() > 5 {
                    ", ..."
                } else {
                    ""
                }
            )?;
        }
        if !self.threads.is_empty() {
            writeln!(f, "  threads (busiest first):")?;
        }
        let mut order: Vec<&ThreadLine> = self.threads.iter().collect();
        let key = |t: &ThreadLine| if self.idle { t.samples } else { t.on_cpu };
        order.sort_by(|a, b| key(b).cmp(&key(a)).then(a.tid.cmp(&b.tid)));
        for t in order.iter().take(20) {
            writeln!(
                f,
                "    {:>8} {:<20} {:>8} samples, {:>5.1}% on-CPU, {:>5.1}% complete{}",
                t.tid,
                t.name,
                t.samples,
                pct(t.on_cpu, t.samples),
                pct(t.complete, t.samples),
                if t.exited { " (exited)" } else { "" }
            )?;
        }
        if order.len() > 20 {
            let rest = &order[20..];
            writeln!(
                f,
                "    ... and {} more threads: {} samples",
                rest.len(),
                rest.iter().map(|t| t.samples).sum::<u64>()
            )?;
        }
        if self.retired.0 > 0 {
            writeln!(
                f,
                "    {} more threads that exited: {} samples",
                self.retired.0, self.retired.1
            )?;
        }
        if !self.top.is_empty() {
            let (what, of) = if self.idle {
                ("all samples", self.samples)
            } else {
                ("on-CPU samples", self.on_cpu)
            };
            writeln!(f, "  top functions (self, share of {what}):")?;
            for (name, n) in &self.top {
                writeln!(f, "    {:>5.1}%  {name}", pct(*n, of))?;
            }
        } else if !self.idle && self.samples > 0 {
            writeln!(
                f,
                "  no thread ran during the session: every sample is of a waiting thread (--idle shows where they wait)"
            )?;
        }
        for l in &self.sentry {
            writeln!(f, "  {l}")?;
        }
        for d in &self.details {
            writeln!(f, "  {d}")?;
        }
        for p in &self.files {
            if crate::sink::output::is_stdout(p) {
                writeln!(f, "  wrote standard output (folded stacks)")?;
            } else {
                writeln!(f, "  wrote {}", p.display())?;
            }
        }
        for e in &self.failures {
            writeln!(f, "  NOT WRITTEN: {e}")?;
        }
        Ok(())
    }
}
