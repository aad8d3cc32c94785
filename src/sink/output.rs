//! Local output files: which format a name asks for, and the files themselves, opened
//! (mode 0600) when the agent starts, before it gives up its privileges, and written (again)
//! at the end of each session. `-` is standard output (folded stacks).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Local output formats, chosen by file name (case-insensitively).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `*.folded`, `*.txt`, or `-` (standard output): folded stacks.
    Folded,
    /// `*.svg`: a flame graph.
    Svg,
    /// `*.speedscope.json`: speedscope's file format.
    Speedscope,
    /// `*.pb.gz`, `*.pprof`: pprof's gzipped `profile.proto`.
    Pprof,
    /// `*.json.gz`: the Firefox Profiler's processed format, gzipped.
    Firefox,
}

impl Format {
    /// Every format, for messages.
    pub const NAMES: &'static str = "*.folded (or - for standard output), *.svg, \
        *.speedscope.json, *.pb.gz (pprof), *.json.gz (Firefox Profiler)";
}

/// The format a path asks for, or None for a name no local output writes.
pub fn format_of(path: &Path) -> Option<Format> {
    if path.as_os_str() == "-" {
        return Some(Format::Folded);
    }
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let ends = |s: &str| name.len() > s.len() && name.ends_with(s);
    if ends(".speedscope.json") {
        Some(Format::Speedscope)
    } else if ends(".pb.gz") || ends(".pprof") {
        Some(Format::Pprof)
    } else if ends(".json.gz") {
        Some(Format::Firefox)
    } else if ends(".svg") {
        Some(Format::Svg)
    } else if ends(".folded") || ends(".txt") {
        Some(Format::Folded)
    } else {
        None
    }
}

/// True for the path that means standard output.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

enum Dest {
    File(std::fs::File),
    Stdout,
}

/// An output opened at start and written at the end of each session.
pub struct OutputFile {
    /// Its path (`-` for standard output).
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    dest: std::sync::Mutex<Dest>,
}

impl std::fmt::Debug for OutputFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputFile")
            .field("path", &self.path)
            .field("format", &self.format)
            .finish()
    }
}

impl OutputFile {
    /// Replace the output's contents with what `write` produces (a file is emptied
    /// first; standard output is appended to).
    pub fn write_with(&self, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
        use std::io::Seek;
        let mut dest = self.dest.lock().unwrap_or_else(|e| e.into_inner());
        let what = || format!("writing {}", self.shown());
        match &mut *dest {
            Dest::File(f) => {
                f.set_len(0).and_then(|_| f.rewind()).with_context(what)?;
                let mut w = std::io::BufWriter::new(&mut *f);
                write(&mut w)
                    .and_then(|_| w.flush().map_err(Into::into))
                    .with_context(what)
            }
            Dest::Stdout => {
                let out = std::io::stdout();
                let mut w = std::io::BufWriter::new(out.lock());
                write(&mut w)
                    .and_then(|_| w.flush().map_err(Into::into))
                    .with_context(what)
            }
        }
    }

    /// The path as the summary shows it.
    pub fn shown(&self) -> String {
        if is_stdout(&self.path) {
            "standard output".to_string()
        } else {
            self.path.display().to_string()
        }
    }
}

/// Open (create, 0600) every output, failing now rather than after the profiling.
pub fn open_all(paths: &[PathBuf]) -> Result<Vec<OutputFile>> {
    if paths.iter().filter(|p| is_stdout(p)).count() > 1 {
        bail!("--output -: standard output can be given once");
    }
    paths
        .iter()
        .map(|p| {
            let Some(format) = format_of(p) else {
                bail!(
                    "unknown output format for {}; use {}",
                    p.display(),
                    Format::NAMES
                );
            };
            let dest = if is_stdout(p) {
                Dest::Stdout
            } else {
                Dest::File(create(p)?)
            };
            Ok(OutputFile {
                path: p.clone(),
                format,
                dest: std::sync::Mutex::new(dest),
            })
        })
        .collect()
}

fn create(path: &Path) -> Result<std::fs::File> {
    // Parent directories are not created (see `outpath`).
    if let Some(why) = super::outpath::parent_problem(path) {
        anyhow::bail!("--output {}: {why}", path.display());
    }
    // Profiles name the target's code: readable by the owner only.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Write `files` of one sink with `write`, recording each in `report`.
pub fn write_each(
    files: &[&OutputFile],
    report: &mut super::SinkReport,
    mut write: impl FnMut(&OutputFile, &mut dyn Write) -> Result<()>,
) {
    for o in files {
        match o.write_with(|w| write(o, w)) {
            Ok(()) => report.files.push(o.path.clone()),
            Err(e) => report
                .failures
                .push(format!("{}: {e:#}; nothing was written there", o.shown())),
        }
    }
}

/// The report of writing the files of `format` among `outputs`: their content is built
/// once, by `build`, and only when there is such a file.
pub fn write_format<T>(
    outputs: &[OutputFile],
    format: Format,
    build: impl FnOnce() -> T,
    write: impl Fn(&mut dyn Write, &T) -> Result<()>,
) -> super::SinkReport {
    let mut report = super::SinkReport::default();
    let mine: Vec<&OutputFile> = outputs.iter().filter(|o| o.format == format).collect();
    if !mine.is_empty() {
        let content = build();
        write_each(&mine, &mut report, |_, w| write(w, &content));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_name_in_any_case() {
        let f = |s: &str| format_of(Path::new(s));
        assert_eq!(f("a/b.folded"), Some(Format::Folded));
        assert_eq!(f("b.TXT"), Some(Format::Folded));
        assert_eq!(f("-"), Some(Format::Folded));
        assert_eq!(f("b.svg"), Some(Format::Svg));
        assert_eq!(f("B.SVG"), Some(Format::Svg));
        assert_eq!(f("p.speedscope.json"), Some(Format::Speedscope));
        assert_eq!(f("P.SpeedScope.JSON"), Some(Format::Speedscope));
        assert_eq!(f("cpu.pb.gz"), Some(Format::Pprof));
        assert_eq!(f("cpu.pprof"), Some(Format::Pprof));
        assert_eq!(f("p.json.gz"), Some(Format::Firefox));
        assert_eq!(f("p.JSON.GZ"), Some(Format::Firefox));
        assert_eq!(f("b.json"), None);
        assert_eq!(f("b"), None);
        assert_eq!(f(".svg"), None, "a bare extension is no name");
    }

    #[test]
    fn files_are_private_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.folded");
        let outs = open_all(std::slice::from_ref(&p)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "profiles are private to their owner");
        outs[0]
            .write_with(|w| Ok(w.write_all(b"long first text\n")?))
            .unwrap();
        outs[0].write_with(|w| Ok(w.write_all(b"x 1\n")?)).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x 1\n");
        assert!(open_all(&[dir.path().join("x.bin")]).is_err());
        assert!(open_all(&["-".into(), "-".into()]).is_err());
    }
}
