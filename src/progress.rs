//! What the agent says while a session runs: messages (a line each, on stderr) and, when
//! stderr is a terminal, one status line that is redrawn in place (elapsed time, samples,
//! rate, threads, what the sinks sent). When stderr is not a terminal the status line is
//! never written: logs get the messages only.

use std::io::Write;
use std::time::{Duration, Instant};

/// How often the status line is redrawn at most.
const REDRAW: Duration = Duration::from_millis(250);

/// Messages and the status line of one run.
pub struct Reporter<'a> {
    message: &'a mut dyn FnMut(&str),
    line: Option<StatusLine>,
}

struct StatusLine {
    shown: bool,
    last: Option<Instant>,
}

impl<'a> Reporter<'a> {
    /// A reporter passing messages to `message`, with a status line when `status_line`.
    pub fn new(message: &'a mut dyn FnMut(&str), status_line: bool) -> Self {
        Reporter {
            message,
            line: status_line.then_some(StatusLine {
                shown: false,
                last: None,
            }),
        }
    }

    /// A message on a line of its own (the status line is cleared first and drawn again
    /// at its next update).
    pub fn message(&mut self, m: &str) {
        self.clear();
        (self.message)(m);
    }

    /// Redraw the status line with `text()`, at most four times a second.
    pub fn status(&mut self, text: impl FnOnce() -> String) {
        let Some(line) = &mut self.line else {
            return;
        };
        if line.last.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        line.last = Some(Instant::now());
        line.shown = true;
        let width = crate::os::term::stderr_columns().unwrap_or(80) as usize;
        let text = fit(&text(), width.saturating_sub(1).max(20));
        let _ = std::io::stderr()
            .lock()
            .write_all(format!("\r{text}\x1b[K").as_bytes());
    }

    /// Remove the status line (before a message, and at the end).
    pub fn clear(&mut self) {
        if let Some(line) = &mut self.line
            && std::mem::take(&mut line.shown)
        {
            line.last = None;
            let _ = std::io::stderr().lock().write_all(b"\r\x1b[K");
        }
    }
}

impl Drop for Reporter<'_> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// `text` cut to `width` characters (with `…` when cut).
pub fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// The status line's text.
pub fn status_text(
    elapsed: f64,
    samples: u64,
    on_cpu: u64,
    threads: usize,
    sinks: &[String],
) -> String {
    let rate = if elapsed > 0.0 {
        samples as f64 / elapsed
    } else {
        0.0
    };
    let mut s = format!(
        "profiler: {elapsed:.0} s, {samples} samples ({on_cpu} on-CPU), {rate:.0} samples/s, \
         {threads} threads"
    );
    for t in sinks {
        s.push_str("; ");
        s.push_str(t);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_and_fitting() {
        let t = status_text(2.0, 400, 100, 3, &["2 chunks sent, 0 spooled".into()]);
        assert_eq!(
            t,
            "profiler: 2 s, 400 samples (100 on-CPU), 200 samples/s, 3 threads; \
             2 chunks sent, 0 spooled"
        );
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
    }

    #[test]
    fn no_status_line_when_disabled() {
        let mut said = Vec::new();
        {
            let mut say = |m: &str| said.push(m.to_string());
            let mut r = Reporter::new(&mut say, false);
            let mut asked = false;
            r.status(|| {
                asked = true;
                String::new()
            });
            assert!(!asked, "the text is not even made");
            r.message("hello");
        }
        assert_eq!(said, ["hello"]);
    }
}
