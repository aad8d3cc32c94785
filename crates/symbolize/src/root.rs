//! The target's filesystem, as the target sees it: how the symbolizer opens the files a
//! target names by path (separate debug files in its `/usr/lib/debug`, debug links next to
//! its binaries, dwz and split-DWARF files). The caller decides how: the agent keeps a
//! handle on the target's root for the whole session (so names outlive the target), a test
//! uses a plain directory.

use std::fmt;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Opens files by the absolute path a target sees them at.
pub trait OpenInRoot: Send + Sync {
    /// Open `path` (absolute, as the target sees it) for reading; symlinks resolve inside
    /// the target's root.
    fn open(&self, path: &Path) -> Option<File>;
    /// How to show `path` in messages (e.g. `/proc/PID/root/usr/lib/debug/...`).
    fn display(&self, path: &Path) -> PathBuf;
}

/// The root a module's target-side paths are opened in. Cheap to clone.
#[derive(Clone)]
pub struct Root(Arc<dyn OpenInRoot>);

impl Root {
    /// A root opened through `opener`.
    pub fn new(opener: impl OpenInRoot + 'static) -> Root {
        Root(Arc::new(opener))
    }

    /// A root opened through a shared opener.
    pub fn shared(opener: Arc<dyn OpenInRoot>) -> Root {
        Root(opener)
    }

    /// A directory of the agent's filesystem standing for the target's root (`/` for a
    /// target in the agent's mount namespace). Absolute symlinks are resolved inside it.
    pub fn dir(path: impl Into<PathBuf>) -> Root {
        Root::new(DirRoot(path.into()))
    }

    /// Open `path` as the target sees it.
    pub fn open(&self, path: &Path) -> Option<File> {
        self.0.open(path)
    }

    /// How to show `path` in messages.
    pub fn display(&self, path: &Path) -> PathBuf {
        self.0.display(path)
    }
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Root({})", self.display(Path::new("/")).display())
    }
}

impl From<PathBuf> for Root {
    fn from(p: PathBuf) -> Root {
        Root::dir(p)
    }
}

impl From<&Path> for Root {
    fn from(p: &Path) -> Root {
        Root::dir(p)
    }
}

impl From<&str> for Root {
    fn from(p: &str) -> Root {
        Root::dir(p)
    }
}

/// A directory standing for the target's root.
struct DirRoot(PathBuf);

impl OpenInRoot for DirRoot {
    fn open(&self, path: &Path) -> Option<File> {
        File::open(in_root(&self.0, path)).ok()
    }
    fn display(&self, path: &Path) -> PathBuf {
        in_root(&self.0, path)
    }
}

/// `path` (absolute, as the target sees it) inside `root`. Absolute symlinks met on the
/// last component are resolved against `root` too (a `.build-id` link inside a container
/// points into the container's filesystem, not the agent's).
pub(crate) fn in_root(root: &Path, path: &Path) -> PathBuf {
    let mut current = join_root(root, path);
    for _ in 0..8 {
        match std::fs::read_link(&current) {
            Ok(target) if target.is_absolute() => current = join_root(root, &target),
            Ok(target) => {
                let parent = current.parent().map(Path::to_path_buf).unwrap_or_default();
                current = parent.join(target);
            }
            Err(_) => break,
        }
    }
    current
}

/// `root` + `path` with `path`'s leading `/` (and any `..` that would climb out) removed.
fn join_root(root: &Path, path: &Path) -> PathBuf {
    let root = if root.as_os_str().is_empty() {
        Path::new("/")
    } else {
        root
    };
    let mut out = root.to_path_buf();
    let base_len = out.components().count();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                if out.components().count() > base_len {
                    out.pop();
                }
            }
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_root_stays_inside() {
        let root = Path::new("/proc/42/root");
        assert_eq!(
            join_root(root, Path::new("/usr/lib/x.so")),
            Path::new("/proc/42/root/usr/lib/x.so")
        );
        assert_eq!(
            join_root(root, Path::new("/../../etc/passwd")),
            Path::new("/proc/42/root/etc/passwd")
        );
        assert_eq!(
            join_root(Path::new("/"), Path::new("/usr/lib")),
            Path::new("/usr/lib")
        );
    }

    #[test]
    fn absolute_symlink_resolved_in_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib/debug/.build-id/ab")).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(root.join("real/file.debug"), b"x").unwrap();
        std::os::unix::fs::symlink(
            "/real/file.debug",
            root.join("usr/lib/debug/.build-id/ab/cd.debug"),
        )
        .unwrap();
        let resolved = in_root(root, Path::new("/usr/lib/debug/.build-id/ab/cd.debug"));
        assert_eq!(resolved, root.join("real/file.debug"));
        let r = Root::dir(root);
        assert!(
            r.open(Path::new("/usr/lib/debug/.build-id/ab/cd.debug"))
                .is_some()
        );
        assert!(r.open(Path::new("/nope")).is_none());
    }
}
