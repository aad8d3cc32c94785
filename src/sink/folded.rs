//! Brendan Gregg's folded stacks (`*.folded`, or `-` for standard output) and flame
//! graphs (`*.svg`, drawn by inferno, with a title saying what was profiled and a search
//! box).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};

use rustc_hash::FxHashMap;

use super::output::{self, Format, OutputFile};
use super::{SampleRef, SessionInfo, Sink, SinkReport, Span};
use crate::pipeline::profile::{StackId, Store};

/// The folded-stacks and flame-graph sink: counts samples by (thread name, stack) and
/// writes every output file of these formats at the end of the session.
pub struct FoldedSink {
    outputs: Arc<Vec<OutputFile>>,
    info: SessionInfo,
    counts: FxHashMap<(u32, StackId), u64>,
    counted: u64,
    span: Span,
}

impl FoldedSink {
    /// A sink writing the folded and SVG ones of `outputs` (opened already).
    pub fn new(outputs: Arc<Vec<OutputFile>>, info: SessionInfo) -> Self {
        FoldedSink {
            outputs,
            info,
            counts: FxHashMap::default(),
            counted: 0,
            span: Span::default(),
        }
    }

    /// True when `outputs` holds a file this sink writes.
    pub fn wanted(outputs: &[OutputFile]) -> bool {
        outputs
            .iter()
            .any(|o| matches!(o.format, Format::Folded | Format::Svg))
    }

    /// Folded stack lines, `thread;root;...;leaf count`, sorted, one per unique stack
    /// (threads with the same name share lines). Inlined functions are frames of their own.
    pub fn lines(&self, store: &Store) -> Vec<String> {
        let mut agg: HashMap<String, u64> = HashMap::new();
        let mut idx = Vec::new();
        for (&(name, stack), &count) in &self.counts {
            let mut line = clean(store.thread_name(name));
            store.stack_frames(stack, &mut idx);
            for &f in idx.iter().rev() {
                for n in store.names(f).iter().rev() {
                    line.push(';');
                    line.push_str(&clean(&n.label));
                }
            }
            *agg.entry(line).or_default() += count;
        }
        let mut lines: Vec<String> = agg.into_iter().map(|(l, c)| format!("{l} {c}")).collect();
        lines.sort();
        lines
    }

    /// The flame graph's title and subtitle.
    fn titles(&self) -> (String, String) {
        let secs = self.span.seconds(self.info.period_ns());
        (
            format!("{} (pid {})", self.info.program, self.info.pid),
            format!(
                "{secs:.1} s at {} Hz: {} {} samples{}",
                self.info.frequency,
                self.counted,
                self.info.mode(),
                if self.info.idle {
                    " (waiting threads included)"
                } else {
                    " (threads that ran; --idle adds waiting ones)"
                }
            ),
        )
    }
}

impl Sink for FoldedSink {
    fn on_sample(&mut self, sample: &SampleRef, _store: &Store) {
        self.span.see(sample.time_ns);
        if !self.info.counts(sample) {
            return;
        }
        if let Some(stack) = sample.stack {
            self.counted += 1;
            *self.counts.entry((sample.thread, stack)).or_default() += 1;
        }
    }

    fn reads_names_per_sample(&self) -> bool {
        false
    }

    fn keeps_stacks(&self) -> bool {
        true
    }

    fn finish(self: Box<Self>, store: &Store) -> SinkReport {
        let mut report = SinkReport::default();
        let mine: Vec<&OutputFile> = self
            .outputs
            .iter()
            .filter(|o| matches!(o.format, Format::Folded | Format::Svg))
            .collect();
        if mine.is_empty() {
            return report;
        }
        let lines = self.lines(store);
        let (title, subtitle) = self.titles();
        output::write_each(&mine, &mut report, |o, w| match o.format {
            Format::Svg => svg_to(w, &lines, &title, &subtitle),
            _ => folded_to(w, &lines),
        });
        report
    }
}

/// A frame name made safe for the folded format (no `;`, no newline).
fn clean(name: &str) -> String {
    name.replace([';', '\n'], ",")
}

fn folded_to(w: &mut dyn Write, lines: &[String]) -> Result<()> {
    for l in lines {
        writeln!(w, "{l}")?;
    }
    Ok(())
}

fn svg_to(w: &mut dyn Write, lines: &[String], title: &str, subtitle: &str) -> Result<()> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.subtitle = Some(subtitle.to_string());
    opts.count_name = "samples".to_string();
    if lines.is_empty() {
        // inferno refuses empty input; an empty profile still gets a valid picture.
        let mut o = inferno::flamegraph::Options::default();
        o.title = format!("{title}: no samples");
        o.subtitle = Some(subtitle.to_string());
        inferno::flamegraph::from_lines(&mut o, ["no-samples 1"].iter().copied(), w)
            .context("drawing the flame graph")?;
    } else {
        inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), w)
            .context("drawing the flame graph")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &std::path::Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn writes_svg_with_title_and_search_and_folded() {
        let dir = tempfile::tempdir().unwrap();
        let lines = vec!["t;main;work 3".to_string()];
        let paths = [dir.path().join("p.folded"), dir.path().join("p.SVG")];
        let outs = output::open_all(&paths).unwrap();
        folded_to(&mut Vec::new(), &lines).unwrap();
        let mut report = SinkReport::default();
        let refs: Vec<&OutputFile> = outs.iter().collect();
        output::write_each(&refs, &mut report, |o, w| match o.format {
            Format::Svg => svg_to(
                w,
                &lines,
                "demo (pid 42)",
                "5.0 s at 100 Hz: 3 on-CPU samples",
            ),
            _ => folded_to(w, &lines),
        });
        assert_eq!(report.files.len(), 2);
        assert_eq!(read(&paths[0]), "t;main;work 3\n");
        let svg = read(&paths[1]);
        assert!(svg.contains("<svg") && svg.contains("work"));
        assert!(svg.contains("demo (pid 42)"), "title");
        assert!(
            svg.contains("5.0 s at 100 Hz: 3 on-CPU samples"),
            "subtitle"
        );
        assert!(svg.contains("id=\"search\""), "search box");
        // An empty profile still gets a valid picture.
        let mut empty = Vec::new();
        svg_to(&mut empty, &[], "t", "s").unwrap();
        assert!(String::from_utf8(empty).unwrap().contains("no samples"));
    }

    #[test]
    fn counts_only_on_cpu_samples_unless_idle() {
        use crate::pipeline::{FrameKey, NO_MODULE, NamedFrame};
        use crate::types::StackEnd;
        let mut store = Store::new();
        let named = |k: &FrameKey, _: &[Arc<crate::modules::Module>]| {
            let mut f = NamedFrame::marker(StackEnd::Root);
            f.kind = crate::pipeline::FrameKind::Native;
            f.label = format!("f{:x}", k.addr).into();
            vec![f]
        };
        let key = |a| FrameKey {
            module: NO_MODULE,
            addr: a,
            is_return: false,
        };
        let run = store.intern(&[key(1), key(0)], StackEnd::Root, named);
        let wait = store.intern(&[key(2), key(0)], StackEnd::Root, named);
        for idle in [false, true] {
            let info = SessionInfo {
                program: "p".into(),
                pid: 1,
                frequency: 100.0,
                idle,
                start: std::time::SystemTime::now(),
            };
            let mut sink = FoldedSink::new(Arc::new(Vec::new()), info);
            for i in 0..10u64 {
                let on_cpu = i < 3;
                let stack = if on_cpu { run } else { wait };
                let thread = store.add_sample(5, stack, StackEnd::Root, on_cpu);
                let s = SampleRef {
                    tid: 5,
                    thread,
                    time_ns: i * 10_000_000,
                    stack,
                    end: StackEnd::Root,
                    on_cpu,
                };
                sink.on_sample(&s, &store);
            }
            let lines = sink.lines(&store);
            if idle {
                assert_eq!(lines, ["tid-5;f0;f1 3", "tid-5;f0;f2 7"]);
            } else {
                assert_eq!(lines, ["tid-5;f0;f1 3"]);
            }
            let (title, subtitle) = sink.titles();
            assert_eq!(title, "p (pid 1)");
            let mode = if idle {
                "10 wall-clock samples"
            } else {
                "3 on-CPU samples"
            };
            assert!(
                subtitle.starts_with(&format!("0.1 s at 100 Hz: {mode}")),
                "{subtitle}"
            );
        }
    }
}
