//! Local outputs: Brendan Gregg's folded stacks (`*.folded`) and flame graphs (`*.svg`,
//! drawn by inferno), plus the numbers for the closing summary.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::processor::Processor;
use profiler_symbolize::Symbolizer;

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

/// Folded stack lines, `thread;root;...;leaf count`, sorted, one per unique stack (threads
/// with the same name share lines). Inlined functions are frames of their own.
pub fn folded_lines(p: &mut Processor, sym: &mut Symbolizer) -> Vec<String> {
    let mut agg: HashMap<String, u64> = HashMap::new();
    let mut idx = Vec::new();
    let counts: Vec<_> = p.profile.counts().iter().map(|(&k, &v)| (k, v)).collect();
    for ((name, stack), count) in counts {
        let mut line = clean(p.profile.thread_name(name));
        p.profile.stack_frames(stack, &mut idx);
        for &f in idx.iter().rev() {
            let names = p.names(f, sym);
            for n in names.iter().rev() {
                line.push(';');
                line.push_str(&clean(&n.function));
            }
        }
        *agg.entry(line).or_default() += count;
    }
    let mut lines: Vec<String> = agg.into_iter().map(|(l, c)| format!("{l} {c}")).collect();
    lines.sort();
    lines
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
    use std::io::Seek;
    for o in outputs {
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
        .with_context(|| format!("writing {}", o.path.display()))?;
    }
    Ok(())
}

fn create(path: &Path) -> Result<BufWriter<std::fs::File>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
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

/// Functions by self samples (the innermost named frame of each stack), most first.
pub fn top_functions(lines: &[String], n: usize) -> Vec<(String, u64)> {
    let mut by_fn: HashMap<&str, u64> = HashMap::new();
    for l in lines {
        let Some((stack, count)) = l.rsplit_once(' ') else {
            continue;
        };
        let count: u64 = count.parse().unwrap_or(0);
        let leaf = stack.rsplit(';').next().unwrap_or(stack);
        *by_fn.entry(leaf).or_default() += count;
    }
    let mut v: Vec<(String, u64)> = by_fn.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
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
    fn top_functions_by_leaf() {
        let lines = vec![
            "main;main;a 5".to_string(),
            "main;main;b;a 3".to_string(),
            "worker;start;b 4".to_string(),
        ];
        let top = top_functions(&lines, 2);
        assert_eq!(top, vec![("a".to_string(), 8), ("b".to_string(), 4)]);
    }

    #[test]
    fn writes_svg_and_folded() {
        let dir = tempfile::tempdir().unwrap();
        let lines = vec!["t;main;work 3".to_string()];
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
        // A second session replaces the first one's profile.
        let outs = open_all(&paths[..1]).unwrap();
        write_all(&outs, &["a;b 1".to_string(), "a;c 2".to_string()], "t").unwrap();
        write_all(&outs, &["x 1".to_string()], "t").unwrap();
        assert_eq!(std::fs::read_to_string(&paths[0]).unwrap(), "x 1\n");
    }
}
