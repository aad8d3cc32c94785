//! Finding separate debug files: by GNU build-id under `.build-id/` directories and by
//! `.gnu_debuglink` name + CRC32 next to the binary, searching the target's filesystem
//! (`/proc/PID/root`) before the agent's own. Candidates are memory-mapped and checked
//! (ELF, matching build-id or CRC) before use.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use object::Object;

use bytes::Bytes;

/// Map the file at `path` read-only. None when it cannot be opened, is empty or is not a
/// regular file.
pub(crate) fn map_file(path: &Path) -> Option<Bytes> {
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() == 0 {
        return None;
    }
    // SAFETY: the mapping is read-only and private to this process; the bytes are only
    // read through `&[u8]`. If another process truncates or rewrites the file while it is
    // mapped, reads may see the new contents or fault (SIGBUS): debug files are immutable
    // in practice (package managers replace them by rename, which keeps this inode), and
    // every parser reading them treats the contents as untrusted input.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    Some(Bytes::from_owner(map))
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

/// The directories that may hold `.build-id/` trees, in search order: the target's
/// `/usr/lib/debug`, the user's debug directories, the agent's `/usr/lib/debug`.
fn debug_roots(root: &Path, debug_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = vec![in_root(root, Path::new("/usr/lib/debug"))];
    dirs.extend(debug_dirs.iter().cloned());
    dirs.push(PathBuf::from("/usr/lib/debug"));
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let key = d.canonicalize().unwrap_or_else(|_| d.clone());
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    });
    dirs
}

/// A debug file found for a module.
pub(crate) struct Found {
    pub path: PathBuf,
    pub data: Bytes,
}

/// The GNU build-id of an ELF image.
pub(crate) fn build_id_of(data: &[u8]) -> Option<Vec<u8>> {
    let file = object::File::parse(data).ok()?;
    file.build_id().ok().flatten().map(<[u8]>::to_vec)
}

/// Find `<dir>/.build-id/xx/yyyy.debug` for `build_id` in the debug roots; the file must
/// be ELF with the same build-id.
pub(crate) fn find_by_build_id(
    build_id: &[u8],
    root: &Path,
    debug_dirs: &[PathBuf],
) -> Option<Found> {
    if build_id.len() < 2 {
        return None;
    }
    let rel = format!(
        ".build-id/{}/{}.debug",
        hex(&build_id[..1]),
        hex(&build_id[1..])
    );
    for dir in debug_roots(root, debug_dirs) {
        let candidate = dir.join(&rel);
        let path = resolve_symlinks_under(root, &dir, &candidate);
        let Some(data) = map_file(&path) else {
            continue;
        };
        if build_id_of(&data).as_deref() == Some(build_id) {
            return Some(Found { path, data });
        }
    }
    None
}

/// Resolve an absolute symlink at `candidate` against the target root when `dir` is inside
/// that root; otherwise the agent's filesystem resolves it normally.
fn resolve_symlinks_under(root: &Path, dir: &Path, candidate: &Path) -> PathBuf {
    if root != Path::new("/")
        && let Ok(rel) = candidate.strip_prefix(root)
        && dir.starts_with(root)
    {
        return in_root(root, &Path::new("/").join(rel));
    }
    candidate.to_path_buf()
}

/// Find the `.gnu_debuglink` file `name` with CRC32 `crc` for the binary at `module_path`
/// (a target path): next to it, in its `.debug/` directory, under the target's
/// `/usr/lib/debug/<dir>/`, then in each debug directory (`<dir>/<bindir>/` and `<dir>/`)
/// and under the agent's `/usr/lib/debug/<bindir>/`. When `build_id` is known, a candidate
/// with a different build-id is rejected too.
pub(crate) fn find_by_debuglink(
    name: &str,
    crc: u32,
    module_path: &str,
    build_id: Option<&[u8]>,
    root: &Path,
    debug_dirs: &[PathBuf],
) -> Option<Found> {
    // The link is a bare file name; anything else is not followed.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return None;
    }
    let module = Path::new(module_path);
    let mut candidates = Vec::new();
    let bin_dir = module.is_absolute().then(|| module.parent()).flatten();
    if let Some(bin_dir) = bin_dir {
        let own = in_root(root, module);
        let next_to = in_root(root, &bin_dir.join(name));
        if next_to != own {
            candidates.push(next_to);
        }
        candidates.push(in_root(root, &bin_dir.join(".debug").join(name)));
        candidates.push(in_root(
            root,
            &Path::new("/usr/lib/debug")
                .join(strip_root(bin_dir))
                .join(name),
        ));
    }
    for dir in debug_dirs {
        if let Some(bin_dir) = bin_dir {
            candidates.push(dir.join(strip_root(bin_dir)).join(name));
        }
        candidates.push(dir.join(name));
    }
    if let Some(bin_dir) = bin_dir {
        candidates.push(
            Path::new("/usr/lib/debug")
                .join(strip_root(bin_dir))
                .join(name),
        );
    }
    let mut tried: Vec<PathBuf> = Vec::new();
    for path in candidates {
        if tried.contains(&path) {
            continue;
        }
        tried.push(path.clone());
        let Some(data) = map_file(&path) else {
            continue;
        };
        if object::File::parse(&*data).is_err() {
            continue;
        }
        if crc32fast::hash(&data) != crc {
            continue;
        }
        if let Some(want) = build_id
            && let Some(have) = build_id_of(&data)
            && have != want
        {
            continue;
        }
        return Some(Found { path, data });
    }
    None
}

/// `path` without its leading `/`.
fn strip_root(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap_or(path)
}

/// Lowercase hex of some bytes (a build-id in a debug file's name).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        assert!(map_file(&resolved).is_some());
    }

    #[test]
    fn map_missing_or_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(map_file(&dir.path().join("nope")).is_none());
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        assert!(map_file(&dir.path().join("empty")).is_none());
        assert!(map_file(dir.path()).is_none());
    }
}
