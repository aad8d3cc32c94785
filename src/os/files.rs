//! Opening the files a target has mapped, as the target sees them: through a handle on
//! its root directory taken at attach ([`TargetRoot`]: an `O_PATH` descriptor of
//! `/proc/PID/root`, paths resolved with `openat2(RESOLVE_IN_ROOT)`, so a target in another
//! mount namespace works, a symlink inside it cannot lead the agent to its own files, and
//! the files can still be opened after the target has exited), checked against the inode
//! the kernel reports for the mapping, falling back to `/proc/PID/map_files` for a file
//! deleted or replaced since it was mapped. The vDSO is read from the target's memory.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use super::{proc, vm};
use crate::modules::ModuleSource;
use crate::procmaps::Mapping;
use crate::types::Pid;
use bytes::Bytes;
use profiler_symbolize::{OpenInRoot, Root};

/// The target's root directory and mount namespace, held open from attach to the end of
/// the session: files the target names by path (its binaries, the debug files in its
/// `/usr/lib/debug`, debug links next to its binaries) stay reachable when the target has
/// exited, even those on mounts of its own namespace.
#[derive(Debug)]
pub struct TargetRoot {
    /// `O_PATH` descriptor of the target's root directory.
    root: OwnedFd,
    /// The target's mount namespace: while it is held, the mounts under the root stay.
    _mnt_ns: Option<OwnedFd>,
    /// `/proc/PID/root`, for messages.
    label: PathBuf,
    /// Whether `openat2` works here (Linux 5.6+); else paths go through
    /// `/proc/self/fd/N`, with absolute symlinks resolved inside the root by hand.
    openat2: bool,
}

impl TargetRoot {
    /// Take hold of the root and mount namespace of process `pid`.
    pub fn open(pid: Pid) -> std::io::Result<TargetRoot> {
        let label = proc::root_dir(pid);
        let root: OwnedFd = nix::fcntl::open(
            &label,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mnt_ns = nix::fcntl::open(
            &proc::proc_dir(pid).join("ns/mnt"),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok();
        let probe = nix::fcntl::openat2(&root, ".", Self::how(OFlag::O_PATH));
        let openat2 = !matches!(probe, Err(nix::errno::Errno::ENOSYS));
        Ok(TargetRoot {
            root,
            _mnt_ns: mnt_ns,
            label,
            openat2,
        })
    }

    fn how(flags: OFlag) -> OpenHow {
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    }

    /// Open `path` (absolute, as the target sees it) for reading. Symlinks resolve inside
    /// the target's root; magic links (`/proc/...`) are refused.
    pub fn open_file(&self, path: &Path) -> Option<File> {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        if self.openat2 {
            nix::fcntl::openat2(&self.root, rel, Self::how(OFlag::O_RDONLY))
                .ok()
                .map(File::from)
        } else {
            let dir = PathBuf::from(format!("/proc/self/fd/{}", self.root.as_raw_fd()));
            Root::dir(dir).open(path)
        }
    }
}

impl OpenInRoot for TargetRoot {
    fn open(&self, path: &Path) -> Option<File> {
        self.open_file(path)
    }
    fn display(&self, path: &Path) -> PathBuf {
        self.label.join(path.strip_prefix("/").unwrap_or(path))
    }
}

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

/// Open the file behind `mapping` of process `pid`, through `root` when given (else
/// through `/proc/PID/root`).
pub fn open_mapping(
    pid: Pid,
    mapping: &Mapping,
    root: Option<&TargetRoot>,
) -> Option<(Bytes, Source)> {
    if !mapping.deleted {
        let (file, path) = match root {
            Some(r) => (
                r.open_file(Path::new(&mapping.path)),
                r.display(Path::new(&mapping.path)),
            ),
            None => {
                let path = proc::root_dir(pid).join(mapping.path.trim_start_matches('/'));
                (File::open(&path).ok(), path)
            }
        };
        if let Some(file) = file {
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
pub struct LiveFiles {
    pid: Pid,
    /// The handle on the target's root (None when it could not be taken: then paths go
    /// through `/proc/PID/root`, which is gone once the target exits).
    root: Option<Arc<TargetRoot>>,
}

impl LiveFiles {
    /// The files of process `pid`; takes hold of its root now (at attach).
    pub fn new(pid: Pid) -> LiveFiles {
        LiveFiles {
            pid,
            root: TargetRoot::open(pid).ok().map(Arc::new),
        }
    }
}

impl ModuleSource for LiveFiles {
    fn file(&self, mapping: &Mapping) -> Option<Bytes> {
        open_mapping(self.pid, mapping, self.root.as_deref()).map(|(b, _)| b)
    }
    fn memory(&self, mapping: &Mapping) -> Option<Bytes> {
        read_mapping(self.pid, mapping)
    }
    fn read_code(&self, avma: u64, buf: &mut [u8]) -> bool {
        vm::read(self.pid, avma, buf) == buf.len()
    }
    fn root(&self) -> Root {
        match &self.root {
            Some(r) => Root::shared(r.clone()),
            None => Root::dir(proc::root_dir(self.pid)),
        }
    }
}
