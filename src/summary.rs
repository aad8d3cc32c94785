//! The closing summary of a session: what was sampled, how well, at what cost, and where
//! it went.

use std::fmt;
use std::path::PathBuf;

use crate::source::{SourceStats, StopReason};
use crate::types::Pid;

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
    /// Samples per thread: (tid, name, samples, complete).
    pub threads: Vec<(i32, String, u64, u64)>,
    /// All samples.
    pub samples: u64,
    /// Samples whose stack reached the thread's root.
    pub complete: u64,
    /// Requested rate.
    pub frequency: f64,
    /// Top functions by self samples (shares are of `samples`).
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
        for e in &self.failures {
            writeln!(f, "  NOT WRITTEN: {e}")?;
        }
        Ok(())
    }
}
