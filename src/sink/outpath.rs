//! Where outputs may go, checked before the first sample. The agent creates an output
//! file, or the envelope directory itself (mode 0700), but never a missing parent
//! directory: a mistyped path would otherwise put a profile somewhere nobody looks, and a
//! path the agent cannot write would be found only when the session ends. A directory that
//! will receive files later (envelopes) is probed by creating and removing a file in it,
//! with the agent's final privileges.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The directory a file path lives in (`.` for a bare name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Why the directory that should hold `path` cannot: it is missing, or it (or a path
/// component above it) is not a directory, or it cannot be reached. None when it exists.
pub fn parent_problem(path: &Path) -> Option<String> {
    dir_problem(&parent_of(path))
}

/// Why `dir` is not an existing directory (see [`parent_problem`]).
pub fn dir_problem(dir: &Path) -> Option<String> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(format!("{} is not a directory", dir.display())),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            // The nearest component that exists: a file there is the real cause.
            let trimmed = PathBuf::from(dir.to_string_lossy().trim_end_matches('/'));
            for a in trimmed.ancestors() {
                if a.as_os_str().is_empty() {
                    break;
                }
                match fs::metadata(a) {
                    Ok(m) if !m.is_dir() => {
                        return Some(format!("{} is not a directory", a.display()));
                    }
                    Ok(_) => break,
                    Err(_) => continue,
                }
            }
            Some(format!(
                "directory {} does not exist (the agent creates no parent directories: create \
                 it first, e.g. `mkdir -p {}`)",
                dir.display(),
                dir.display()
            ))
        }
        Err(e) => Some(format!("cannot reach {}: {e}", dir.display())),
    }
}

/// Check that files can be created in `dir`: create a probe file there and remove it.
pub fn probe_dir(dir: &Path) -> io::Result<()> {
    let probe = dir.join(format!(".profiler-probe-{}", std::process::id()));
    let _ = fs::remove_file(&probe);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&probe)?;
    fs::remove_file(&probe)
}

/// Make sure envelope files can be written to `out`: a `*.envelope` file name (its
/// directory must exist) or a directory (created, mode 0700, when its parent exists). The
/// directory is probed. Returns true when `out` names a file. The error says why nothing
/// could be written there.
pub fn prepare_envelope_output(out: &Path) -> Result<bool, String> {
    let is_file = !out.is_dir()
        && out
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".envelope"))
        && !out.as_os_str().to_string_lossy().ends_with('/');
    let dir = if is_file {
        if let Some(why) = parent_problem(out) {
            return Err(why);
        }
        parent_of(out)
    } else {
        match fs::symlink_metadata(out) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let trimmed = PathBuf::from(out.to_string_lossy().trim_end_matches('/'));
                if let Some(why) = parent_problem(&trimmed) {
                    return Err(why);
                }
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(out)
                    .map_err(|e| format!("cannot create the directory: {e}"))?;
            }
            _ => {
                if let Some(why) = dir_problem(out) {
                    return Err(why);
                }
            }
        }
        out.to_path_buf()
    };
    probe_dir(&dir).map_err(|e| format!("cannot create files in {}: {e}", dir.display()))?;
    Ok(is_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_named_not_created() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        assert_eq!(parent_problem(&t.join("a.folded")), None);
        assert_eq!(parent_problem(Path::new("a.folded")), None);
        let missing = parent_problem(&t.join("no/such/a.folded")).unwrap();
        assert!(
            missing.contains(&format!("directory {}/no/such does not exist", t.display())),
            "{missing}"
        );
        assert!(!t.join("no").exists(), "nothing created");
        let file = t.join("file");
        fs::write(&file, b"x").unwrap();
        for p in [file.join("a.folded"), file.join("sub/deeper/a.folded")] {
            let why = parent_problem(&p).unwrap();
            assert_eq!(why, format!("{} is not a directory", file.display()));
        }
    }

    #[test]
    fn envelope_outputs() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        // A directory is created (0700) when its parent exists, and probed.
        let dir = t.join("env/");
        assert_eq!(prepare_envelope_output(&dir), Ok(false));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "probe removed");
        assert_eq!(prepare_envelope_output(&t.join("one.envelope")), Ok(true));
        assert!(!t.join("one.envelope").exists());
        let e = prepare_envelope_output(&t.join("a/b/")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let e = prepare_envelope_output(&t.join("a/x.envelope")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        fs::write(t.join("f"), b"").unwrap();
        let e = prepare_envelope_output(&t.join("f/")).unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
        // A directory nothing can be created in (as the agent runs).
        let e = prepare_envelope_output(Path::new("/proc/")).unwrap_err();
        assert!(e.contains("cannot create files in /proc"), "{e}");
    }
}
