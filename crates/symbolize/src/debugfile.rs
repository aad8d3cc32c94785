//! Finding separate debug files: by GNU build-id under `.build-id/` directories and by
//! `.gnu_debuglink` name + CRC32 next to the binary, searching the target's filesystem
//! (through its [`Root`]) before the agent's own. Candidates are memory-mapped and checked
//! (ELF, matching build-id or CRC) before use.

use std::fs::File;
use std::path::{Path, PathBuf};

use object::Object;

use crate::root::Root;
use bytes::Bytes;

/// Where a candidate file is: a path the target sees (opened through its root) or a path
/// of the agent's own filesystem (`--debug-dir`, the agent's `/usr/lib/debug`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    Target(PathBuf),
    Agent(PathBuf),
}

impl Place {
    pub(crate) fn map(&self, root: &Root) -> Option<Bytes> {
        match self {
            Place::Target(p) => map_open(root.open(p)?),
            Place::Agent(p) => map_file(p),
        }
    }
    fn shown(&self, root: &Root) -> PathBuf {
        match self {
            Place::Target(p) => root.display(p),
            Place::Agent(p) => p.clone(),
        }
    }
}

/// Map the file at `path` (on the agent's filesystem) read-only. None when it cannot be
/// opened, is empty or is not a regular file.
pub(crate) fn map_file(path: &Path) -> Option<Bytes> {
    map_open(File::open(path).ok()?)
}

/// Map an open file read-only (see [`map_file`]).
pub(crate) fn map_open(file: File) -> Option<Bytes> {
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

/// The directories that may hold `.build-id/` trees, in search order: the target's
/// `/usr/lib/debug`, the user's debug directories, the agent's `/usr/lib/debug`.
fn debug_roots(debug_dirs: &[PathBuf]) -> Vec<Place> {
    let mut dirs = vec![Place::Target(PathBuf::from("/usr/lib/debug"))];
    dirs.extend(debug_dirs.iter().cloned().map(Place::Agent));
    dirs.push(Place::Agent(PathBuf::from("/usr/lib/debug")));
    dirs
}

/// A debug file found for a module.
pub(crate) struct Found {
    /// Where it is, to show.
    pub path: PathBuf,
    /// Where it is, to open files next to it.
    pub place: Place,
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
    root: &Root,
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
    for dir in debug_roots(debug_dirs) {
        let candidate = match dir {
            Place::Target(d) => Place::Target(d.join(&rel)),
            Place::Agent(d) => Place::Agent(d.join(&rel)),
        };
        let Some(data) = candidate.map(root) else {
            continue;
        };
        if build_id_of(&data).as_deref() == Some(build_id) {
            let path = candidate.shown(root);
            return Some(Found {
                path,
                place: candidate,
                data,
            });
        }
    }
    None
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
    root: &Root,
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
        let next_to = bin_dir.join(name);
        if next_to != module {
            candidates.push(Place::Target(next_to));
        }
        candidates.push(Place::Target(bin_dir.join(".debug").join(name)));
        candidates.push(Place::Target(
            Path::new("/usr/lib/debug")
                .join(strip_root(bin_dir))
                .join(name),
        ));
    }
    for dir in debug_dirs {
        if let Some(bin_dir) = bin_dir {
            candidates.push(Place::Agent(dir.join(strip_root(bin_dir)).join(name)));
        }
        candidates.push(Place::Agent(dir.join(name)));
    }
    if let Some(bin_dir) = bin_dir {
        candidates.push(Place::Agent(
            Path::new("/usr/lib/debug")
                .join(strip_root(bin_dir))
                .join(name),
        ));
    }
    let mut tried: Vec<Place> = Vec::new();
    for place in candidates {
        if tried.contains(&place) {
            continue;
        }
        tried.push(place.clone());
        let Some(data) = place.map(root) else {
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
        let path = place.shown(root);
        return Some(Found { path, place, data });
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
    fn map_missing_or_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(map_file(&dir.path().join("nope")).is_none());
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        assert!(map_file(&dir.path().join("empty")).is_none());
        assert!(map_file(dir.path()).is_none());
    }
}
