//! Local outputs: Brendan Gregg's folded stacks (`*.folded`) and flame graphs (`*.svg`,
//! drawn by inferno).

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use rustc_hash::FxHashMap;

use super::{SampleRef, Sink, SinkReport};
use crate::pipeline::profile::{StackId, Store};

/// Output formats chosen by file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `*.folded`
    Folded,
    /// `*.svg`
    Svg,
}

/// The format a path asks for, or None for a name this module does not write.
pub fn format_of(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()? {
        "folded" | "txt" => Some(Format::Folded),
        "svg" => Some(Format::Svg),
        _ => None,
    }
}

/// The folded-stacks and flame-graph sink: counts samples by (thread name, stack) and
/// writes every output file at the end of the session.
pub struct FoldedSink {
    outputs: std::sync::Arc<Vec<OutputFile>>,
    title: String,
    counts: FxHashMap<(u32, StackId), u64>,
}

impl FoldedSink {
    /// A sink writing `outputs` (opened already) with `title` on flame graphs.
    pub fn new(outputs: std::sync::Arc<Vec<OutputFile>>, title: String) -> Self {
        FoldedSink {
            outputs,
            title,
            counts: FxHashMap::default(),
        }
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
}

impl Sink for FoldedSink {
    fn on_sample(&mut self, sample: &SampleRef, _store: &Store) {
        if let Some(stack) = sample.stack {
            *self.counts.entry((sample.thread, stack)).or_default() += 1;
        }
    }

    fn keeps_stacks(&self) -> bool {
        true
    }

    fn finish(self: Box<Self>, store: &Store) -> SinkReport {
        let mut report = SinkReport::default();
        if self.outputs.is_empty() {
            return report;
        }
        let lines = self.lines(store);
        for o in self.outputs.iter() {
            match write_one(o, &lines, &self.title) {
                Ok(()) => report.files.push(o.path.clone()),
                Err(e) => report.failures.push(format!(
                    "{}: {e:#}; nothing was written there",
                    o.path.display()
                )),
            }
        }
        report
    }
}

/// A frame name made safe for the folded format (no `;`, no newline).
fn clean(name: &str) -> String {
    name.replace([';', '\n'], ",")
}

/// An output file opened at start, before the agent gives up its privileges, and written
/// (again) at the end of each session.
#[derive(Debug)]
pub struct OutputFile {
    /// Its path.
    pub path: PathBuf,
    file: std::sync::Mutex<std::fs::File>,
}

/// Open (create, 0600) every output, failing now rather than after the profiling.
pub fn open_all(paths: &[PathBuf]) -> Result<Vec<OutputFile>> {
    paths
        .iter()
        .map(|p| {
            if format_of(p).is_none() {
                bail!("unknown output format for {}", p.display());
            }
            let w = create(p)?;
            let file = w
                .into_inner()
                .map_err(|e| anyhow::anyhow!("{}", e.error()))?;
            Ok(OutputFile {
                path: p.clone(),
                file: std::sync::Mutex::new(file),
            })
        })
        .collect()
}

/// Write `lines` to every output in the format its name asks for, replacing what an
/// earlier session wrote.
pub fn write_all(outputs: &[OutputFile], lines: &[String], title: &str) -> Result<()> {
    for o in outputs {
        write_one(o, lines, title)?;
    }
    Ok(())
}

/// Write `lines` to one output, replacing what an earlier session wrote.
fn write_one(o: &OutputFile, lines: &[String], title: &str) -> Result<()> {
    use std::io::Seek;
    let mut f = o.file.lock().unwrap_or_else(|e| e.into_inner());
    f.set_len(0)
        .and_then(|_| f.rewind())
        .with_context(|| format!("writing {}", o.path.display()))?;
    let mut w = BufWriter::new(&mut *f);
    match format_of(&o.path) {
        Some(Format::Folded) => folded_to(&mut w, lines),
        Some(Format::Svg) => svg_to(&mut w, lines, title),
        None => bail!("unknown output format for {}", o.path.display()),
    }
    .and_then(|_| w.flush().map_err(Into::into))
    .with_context(|| format!("writing {}", o.path.display()))
}

fn create(path: &Path) -> Result<BufWriter<std::fs::File>> {
    // Parent directories are not created (see `outpath`).
    if let Some(why) = super::outpath::parent_problem(path) {
        bail!("--output {}: {why}", path.display());
    }
    // Profiles name the target's code: readable by the owner only.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(BufWriter::new(f))
}

fn folded_to(w: &mut impl Write, lines: &[String]) -> Result<()> {
    for l in lines {
        writeln!(w, "{l}")?;
    }
    Ok(())
}

fn svg_to(w: &mut impl Write, lines: &[String], title: &str) -> Result<()> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "samples".to_string();
    if lines.is_empty() {
        // inferno refuses empty input; an empty profile still gets a valid picture.
        let mut o = inferno::flamegraph::Options::default();
        o.title = format!("{title} (no samples)");
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

    #[test]
    fn formats_by_name() {
        assert_eq!(format_of(Path::new("a/b.folded")), Some(Format::Folded));
        assert_eq!(format_of(Path::new("b.svg")), Some(Format::Svg));
        assert_eq!(format_of(Path::new("b.json")), None);
        assert_eq!(format_of(Path::new("b")), None);
    }

    #[test]
    fn writes_svg_and_folded() {
        let dir = tempfile::tempdir().unwrap();
        let lines = vec!["t;main;work 3".to_string()];
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let paths = vec![dir.path().join("p.folded"), dir.path().join("sub/p.svg")];
        write_all(&open_all(&paths).unwrap(), &lines, "test").unwrap();
        assert_eq!(
            std::fs::read_to_string(&paths[0]).unwrap(),
            "t;main;work 3\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&paths[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "profiles are private to their owner");
        let svg = std::fs::read_to_string(&paths[1]).unwrap();
        assert!(svg.contains("<svg") && svg.contains("work"));
        write_all(
            &open_all(&[dir.path().join("e.svg")]).unwrap(),
            &[],
            "empty",
        )
        .unwrap();
        assert!(open_all(&[dir.path().join("x.bin")]).is_err());
        // Missing directories are named, not created; a file on the path is not a directory.
        let e = open_all(&[dir.path().join("new/p.folded")]).unwrap_err();
        assert!(format!("{e:#}").contains("new does not exist"), "{e:#}");
        assert!(!dir.path().join("new").exists());
        let e = open_all(&[paths[0].join("p.folded")]).unwrap_err();
        assert!(
            format!("{e:#}").ends_with(&format!("{} is not a directory", paths[0].display())),
            "{e:#}"
        );
        // A second session replaces the first one's profile.
        let outs = open_all(&paths[..1]).unwrap();
        write_all(&outs, &["a;b 1".to_string(), "a;c 2".to_string()], "t").unwrap();
        write_all(&outs, &["x 1".to_string()], "t").unwrap();
        assert_eq!(std::fs::read_to_string(&paths[0]).unwrap(), "x 1\n");
    }
}
