//! Opening the files a target has mapped, as the target sees them: through
//! `/proc/PID/root` (so a target in another mount namespace works), checked against the
//! inode the kernel reports for the mapping, falling back to `/proc/PID/map_files` for a
//! file deleted or replaced since it was mapped. The vDSO is read from the target's memory.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use memmap2::Mmap;

use super::{proc, vm};
use crate::modules::ModuleSource;
use crate::procmaps::Mapping;
use crate::types::Pid;
use bytes::Bytes;

/// Where a module's bytes came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The path below the target's root.
    Root(PathBuf),
    /// `/proc/PID/map_files/...` (the file was deleted or replaced).
    MapFiles(PathBuf),
    /// The target's memory (vDSO).
    Memory,
}

/// Map a file read-only.
pub fn map_file(file: &File) -> Option<Bytes> {
    let len = file.metadata().ok()?.len();
    if len == 0 {
        return None;
    }
    // SAFETY: the mapping is read-only and private. If the file is truncated or rewritten
    // underneath, reads may see new bytes or fault with SIGBUS; the files mapped here are
    // executables and libraries in use by the target, which the loader also maps and which
    // package managers replace by rename rather than in place.
    let map = unsafe { Mmap::map(file) }.ok()?;
    Some(Bytes::from_owner(map))
}

/// Open the file behind `mapping` of process `pid`.
pub fn open_mapping(pid: Pid, mapping: &Mapping) -> Option<(Bytes, Source)> {
    if !mapping.deleted {
        let path = proc::root_dir(pid).join(mapping.path.trim_start_matches('/'));
        if let Ok(file) = File::open(&path) {
            let same = file.metadata().is_ok_and(|m| m.ino() == mapping.inode);
            if same && let Some(b) = map_file(&file) {
                return Some((b, Source::Root(path)));
            }
        }
    }
    let mf = proc::proc_dir(pid)
        .join("map_files")
        .join(format!("{:x}-{:x}", mapping.start, mapping.end));
    let file = File::open(&mf).ok()?;
    map_file(&file).map(|b| (b, Source::MapFiles(mf)))
}

/// Read a mapping's bytes from the target's memory (for the vDSO).
pub fn read_mapping(pid: Pid, mapping: &Mapping) -> Option<Bytes> {
    let len = usize::try_from(mapping.end - mapping.start).ok()?;
    if len > 1 << 20 {
        return None;
    }
    let mut buf = vec![0u8; len];
    // Through a live thread: a main thread that exited has no memory left to read.
    let reader = proc::live_task(pid).unwrap_or(pid);
    (vm::read(reader, mapping.start, &mut buf) == len).then(|| Bytes::from_owner(buf))
}

/// The files of a live target, read through its root: the [`ModuleSource`] of a session.
pub struct LiveFiles(pub Pid);

impl ModuleSource for LiveFiles {
    fn file(&self, mapping: &Mapping) -> Option<Bytes> {
        open_mapping(self.0, mapping).map(|(b, _)| b)
    }
    fn memory(&self, mapping: &Mapping) -> Option<Bytes> {
        read_mapping(self.0, mapping)
    }
    fn root(&self) -> PathBuf {
        proc::root_dir(self.0)
    }
}
