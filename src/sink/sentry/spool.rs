//! The disk spool: every chunk not yet accepted by Sentry, one file each, oldest first.
//!
//! Files are `<20-digit unix nanoseconds>-<chunk_id>.chunk`: a header line (JSON: format,
//! destination, chunk id, payload length) then the chunk payload JSON, created 0600 in a
//! directory of the agent's own. Writes go to `<name>.tmp` (created new, never through a
//! symbolic link) then `rename`, so a crash mid-write leaves only a `*.tmp` file, which
//! [`Spool::open`] deletes. The total size is bounded: adding a chunk first evicts the oldest
//! ones until it fits. File names sort by age, across runs too, so a new run resumes with
//! the oldest chunk.
//!
//! The spool holds only what this agent wrote, for the project it was meant for:
//! - the directory (and every parent the agent creates for it) must belong to the agent's
//!   uid and be writable by nobody else, and its existing parents must belong to the agent's
//!   uid or root ([`secure_dir`]): otherwise another user could plant files for the agent
//!   to send, or take its chunks away;
//! - each chunk names its destination (host and project of the DSN, never the key): a run
//!   sends only its own destination's chunks and keeps the others (within the bound);
//! - a file that is not a chunk this agent wrote (another owner, not a regular file, a
//!   header that does not parse or does not match, a wrong length, larger than any chunk) is
//!   deleted with a warning and never sent.
//!
//! One process per spool directory: two agents sharing one directory is not supported.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Extension of spooled chunk files.
pub const SPOOL_EXT: &str = "chunk";

/// The header format written and accepted.
const FORMAT: u32 = 1;

/// Longest header line read.
const MAX_HEADER: usize = 1024;

/// Largest file that can be a chunk (Relay refuses profile chunks over 50 MiB), whatever
/// the spool's bound.
pub const MAX_CHUNK_BYTES: u64 = 50 * 1024 * 1024;

/// Write `data` to `path` atomically: a sibling `*.tmp` file created new with `mode`
/// (never through a symbolic link; a stale one from a crash is replaced), fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&tmp)
    };
    let mut f = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Left by a crash (or planted): remove the name itself, whatever it points to.
            fs::remove_file(&tmp)?;
            create()?
        }
        r => r?,
    };
    let result = f
        .write_all(data)
        .and_then(|_| f.sync_all())
        .and_then(|_| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The first line of a spool file.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Header {
    profiler_spool: u32,
    destination: String,
    chunk_id: String,
    length: u64,
}

/// One spooled chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolEntry {
    /// File path.
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// For this spool's destination (else kept for the run that sends there).
    pub ours: bool,
}

impl SpoolEntry {
    /// The chunk id, from the file name.
    pub fn chunk_id(&self) -> &str {
        self.path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.split_once('-'))
            .map_or("?", |(_, id)| id)
    }
}

/// Result of [`Spool::push`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Oldest chunks deleted to make room (of any destination).
    pub evicted: Vec<SpoolEntry>,
    /// The new chunk alone is larger than the whole spool: it was not stored.
    pub too_large: bool,
}

/// What [`Spool::open`] found besides the chunks it loaded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Partly written files (`*.tmp`) of a crashed run, deleted.
    pub tmp_removed: usize,
    /// Files with a chunk's name that are not chunks this agent wrote: deleted, with why.
    pub rejected: Vec<(PathBuf, String)>,
    /// Chunks kept for other destinations: how many per destination.
    pub others: BTreeMap<String, usize>,
}

/// A bounded directory of pending chunks.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    destination: String,
    entries: VecDeque<SpoolEntry>,
    total: u64,
    last_stamp: u128,
}

fn is_spool_name(name: &str) -> bool {
    name.strip_suffix(".chunk")
        .and_then(|s| s.split_once('-'))
        .is_some_and(|(stamp, id)| {
            stamp.len() == 20
                && stamp.bytes().all(|b| b.is_ascii_digit())
                && !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn refuse(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

/// The uid the agent runs as (owner of what it creates).
fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Why a directory the agent keeps its spool in (or created for it) cannot be trusted.
fn own_dir_problem(path: &Path, md: &fs::Metadata, uid: u32) -> Option<String> {
    if !md.is_dir() {
        return Some(format!("{} is not a directory", path.display()));
    }
    if md.uid() != uid {
        return Some(format!(
            "{} belongs to uid {}, not to the agent's uid {uid}: another user could put files \
             there for the agent to send, or delete its chunks; use a directory of the agent's \
             own (--spool-dir), or `chown {uid} {}`",
            path.display(),
            md.uid(),
            path.display()
        ));
    }
    if md.mode() & 0o022 != 0 {
        return Some(format!(
            "{} is writable by other users (mode {:04o}): they could put files there for the \
             agent to send; `chmod 700 {}`",
            path.display(),
            md.mode() & 0o7777,
            path.display()
        ));
    }
    None
}

/// Create `dir` (mode 0700, parents too) if missing and check that it can hold the spool:
/// the directory and every parent created here belong to the agent's uid and nobody else can
/// write them; existing parents belong to the agent's uid or root (the owner of a parent
/// could swap the spool for a directory of their own). Returns the directory's canonical
/// path. A refusal is a `PermissionDenied` error whose message says why and what to do.
pub fn secure_dir(dir: &Path) -> io::Result<PathBuf> {
    let uid = my_uid();
    let mut missing = Vec::new();
    // The nearest part of the path that exists (the working directory for a relative one).
    let mut p = dir;
    let existing = loop {
        match fs::symlink_metadata(p) {
            Ok(_) => break p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(p.to_path_buf());
                match p.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                    _ => break Path::new("."),
                }
            }
            Err(e) => return Err(e),
        }
    };
    // The parents that exist already first: creating inside another user's directory
    // would fail, or leave them the spool.
    let base = fs::canonicalize(existing)?;
    let first = if missing.is_empty() {
        base.parent().map(Path::to_path_buf)
    } else {
        Some(base)
    };
    if let Some(first) = first {
        check_parents(&first, &[], uid)?;
    }
    let mut created = Vec::new();
    for m in missing.iter().rev() {
        match DirBuilder::new().mode(0o700).create(m) {
            Ok(()) => created.push(fs::canonicalize(m)?),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let canonical = fs::canonicalize(dir)?;
    let md = fs::metadata(&canonical)?;
    if let Some(why) = own_dir_problem(&canonical, &md, uid) {
        return Err(refuse(why));
    }
    for c in &created {
        if let Some(why) = own_dir_problem(c, &fs::metadata(c)?, uid) {
            return Err(refuse(why));
        }
    }
    if let Some(parent) = canonical.parent() {
        check_parents(parent, &created, uid)?;
    }
    Ok(canonical)
}

/// Refuse when `dir` or a directory above it (other than those in `skip`) belongs to
/// someone other than `uid` or root.
fn check_parents(dir: &Path, skip: &[PathBuf], uid: u32) -> io::Result<()> {
    for a in dir.ancestors() {
        if skip.iter().any(|c| c == a) {
            continue;
        }
        let md = fs::metadata(a)?;
        if md.uid() != uid && md.uid() != 0 {
            return Err(refuse(format!(
                "its parent {} belongs to uid {}, neither the agent's uid {uid} nor root: that \
                 user could replace the spool with a directory of their own; keep the spool \
                 under a directory of the agent's user or root",
                a.display(),
                md.uid()
            )));
        }
    }
    Ok(())
}

/// Open a spool file without following a symbolic link, and check it could be one of
/// ours: a regular file of the agent's uid, not larger than `max`. Returns it and its size.
fn open_checked(path: &Path, max: u64) -> Result<(File, u64), String> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "a symbolic link".to_string(),
            _ => e.to_string(),
        })?;
    let md = f.metadata().map_err(|e| e.to_string())?;
    if !md.is_file() {
        return Err("not a regular file".into());
    }
    if md.uid() != my_uid() {
        return Err(format!("owned by uid {}, not by the agent", md.uid()));
    }
    if md.len() > max {
        return Err(format!(
            "{} bytes, larger than any chunk the agent writes ({max} bytes at most)",
            md.len()
        ));
    }
    Ok((f, md.len()))
}

/// Read and check the header line of an open spool file named for `chunk_id`.
fn read_header(f: &mut File, size: u64, chunk_id: &str) -> Result<(Header, Vec<u8>), String> {
    let mut head = vec![0u8; MAX_HEADER.min(size as usize)];
    f.read_exact(&mut head).map_err(|e| e.to_string())?;
    let Some(nl) = head.iter().position(|&b| b == b'\n') else {
        return Err("no header line".into());
    };
    let h: Header = serde_json::from_slice(&head[..nl]).map_err(|e| format!("bad header: {e}"))?;
    if h.profiler_spool != FORMAT {
        return Err(format!(
            "header of format {}, not {FORMAT}",
            h.profiler_spool
        ));
    }
    if h.chunk_id != chunk_id {
        return Err(format!(
            "header names chunk {:?}, the file name {chunk_id:?}",
            h.chunk_id
        ));
    }
    if h.length != size - nl as u64 - 1 {
        return Err(format!(
            "header says {} payload bytes, the file holds {}",
            h.length,
            size - nl as u64 - 1
        ));
    }
    Ok((h, head[nl + 1..].to_vec()))
}

impl Spool {
    /// Open (creating it 0700 if missing, see [`secure_dir`]) the spool directory of chunks
    /// for `destination` ([`profiler_sentry::Dsn::destination`]), delete leftover `*.tmp`
    /// files and files that are not chunks this agent wrote, and load the chunks an earlier
    /// run left, oldest first (those for other destinations are kept, not sent).
    pub fn open(dir: &Path, max_bytes: u64, destination: &str) -> io::Result<(Spool, OpenReport)> {
        let dir = secure_dir(dir)?;
        let max_file = max_bytes.min(MAX_CHUNK_BYTES) + MAX_HEADER as u64;
        let mut entries = Vec::new();
        let mut report = OpenReport::default();
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") && is_spool_name(name.trim_end_matches(".tmp")) {
                if fs::remove_file(e.path()).is_ok() {
                    report.tmp_removed += 1;
                }
                continue;
            }
            if !is_spool_name(name) {
                continue;
            }
            let path = e.path();
            let mut entry = SpoolEntry {
                path: path.clone(),
                size: 0,
                ours: false,
            };
            let checked = open_checked(&path, max_file).and_then(|(mut f, size)| {
                entry.size = size;
                read_header(&mut f, size, entry.chunk_id())
            });
            match checked {
                Ok((h, _)) => {
                    entry.ours = h.destination == destination;
                    if !entry.ours {
                        *report.others.entry(h.destination).or_default() += 1;
                    }
                    entries.push(entry);
                }
                Err(why) => {
                    let _ = fs::remove_file(&path);
                    report.rejected.push((path, why));
                }
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let total = entries.iter().map(|e| e.size).sum();
        let last_stamp = entries
            .last()
            .and_then(|e| e.path.file_name()?.to_str()?.get(..20)?.parse().ok())
            .unwrap_or(0);
        Ok((
            Spool {
                dir,
                max_bytes,
                destination: destination.to_string(),
                entries: entries.into(),
                total,
                last_stamp,
            },
            report,
        ))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of chunks waiting for this spool's destination.
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.ours).count()
    }

    /// True when nothing waits for this spool's destination.
    pub fn is_empty(&self) -> bool {
        !self.entries.iter().any(|e| e.ours)
    }

    /// Number of chunks kept for other destinations.
    pub fn others(&self) -> usize {
        self.entries.iter().filter(|e| !e.ours).count()
    }

    /// Bytes used by every waiting chunk (all destinations).
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The oldest chunk waiting for this spool's destination.
    pub fn front(&self) -> Option<&SpoolEntry> {
        self.entries.iter().find(|e| e.ours)
    }

    /// Store a chunk payload (atomically), evicting the oldest chunks (of any destination)
    /// when the spool would exceed its bound.
    pub fn push(&mut self, chunk_id: &str, payload: &[u8]) -> io::Result<PushOutcome> {
        let id: String = chunk_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect();
        let id = if id.is_empty() {
            "chunk".to_string()
        } else {
            id
        };
        let mut data = serde_json::to_vec(&Header {
            profiler_spool: FORMAT,
            destination: self.destination.clone(),
            chunk_id: id.clone(),
            length: payload.len() as u64,
        })
        .expect("a header serializes");
        data.push(b'\n');
        data.extend_from_slice(payload);
        let size = data.len() as u64;
        let mut out = PushOutcome::default();
        if size > self.max_bytes || payload.len() as u64 > MAX_CHUNK_BYTES {
            out.too_large = true;
            return Ok(out);
        }
        while self.total + size > self.max_bytes {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            let _ = fs::remove_file(&old.path);
            self.total -= old.size;
            out.evicted.push(old);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let stamp = now.max(self.last_stamp + 1);
        self.last_stamp = stamp;
        let path = self.dir.join(format!("{stamp:020}-{id}.{SPOOL_EXT}"));
        write_atomic(&path, &data, 0o600)?;
        self.entries.push_back(SpoolEntry {
            path,
            size,
            ours: true,
        });
        self.total += size;
        Ok(out)
    }

    /// Read the payload of an entry, checking again that the file is a chunk this agent
    /// wrote for this destination (it may have been replaced since it was listed). The error
    /// says why not; such a file must be removed, never sent.
    pub fn read(&self, entry: &SpoolEntry) -> Result<Vec<u8>, String> {
        let max_file = self.max_bytes.min(MAX_CHUNK_BYTES) + MAX_HEADER as u64;
        let (mut f, size) = open_checked(&entry.path, max_file)?;
        let (h, mut payload) = read_header(&mut f, size, entry.chunk_id())?;
        if h.destination != self.destination {
            return Err(format!("meant for {}", h.destination));
        }
        f.read_to_end(&mut payload).map_err(|e| e.to_string())?;
        if payload.len() as u64 != h.length {
            return Err("changed while read".into());
        }
        Ok(payload)
    }

    /// Delete `entry` (after it was accepted, or dropped). False when it is no longer in
    /// the spool (evicted meanwhile).
    pub fn remove(&mut self, entry: &SpoolEntry) -> bool {
        let Some(i) = self.entries.iter().position(|e| e.path == entry.path) else {
            return false;
        };
        let e = self.entries.remove(i).expect("index in range");
        let _ = fs::remove_file(&e.path);
        self.total -= e.size;
        true
    }

    /// Delete the oldest chunk (of any destination).
    pub fn pop_front(&mut self) -> Option<SpoolEntry> {
        let e = self.entries.pop_front()?;
        let _ = fs::remove_file(&e.path);
        self.total -= e.size;
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const DEST: &str = "o1.ingest.sentry.io/42";

    fn ids(s: &Spool) -> Vec<String> {
        s.entries.iter().map(|e| e.chunk_id().to_string()).collect()
    }

    #[test]
    fn push_order_permissions_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/spool");
        let (mut s, _) = Spool::open(&dir, 1000, DEST).unwrap();
        for d in [&dir, &tmp.path().join("a")] {
            assert_eq!(fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700);
        }
        for i in 0..3 {
            let out = s
                .push(&format!("id{i}"), format!("payload{i}").as_bytes())
                .unwrap();
            assert_eq!(out, PushOutcome::default());
        }
        assert_eq!(s.len(), 3);
        let front = s.front().unwrap().clone();
        assert_eq!(front.chunk_id(), "id0");
        assert_eq!(s.read(&front).unwrap(), b"payload0");
        assert_eq!(
            fs::metadata(&front.path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Header line, then the payload.
        let text = fs::read_to_string(&front.path).unwrap();
        assert!(text.starts_with(&format!(
            "{{\"profiler_spool\":1,\"destination\":\"{DEST}\",\"chunk_id\":\"id0\",\"length\":8}}\n"
        )));
        assert!(text.ends_with("\npayload0"));
        let size = s.total_bytes();

        // A crash mid-write leaves a tmp file; a file without a chunk's name is left alone.
        fs::write(dir.join("00000000000000000001-half.chunk.tmp"), b"{\"trunc").unwrap();
        fs::write(dir.join("README"), b"not ours").unwrap();
        drop(s);
        let (mut s, report) = Spool::open(&dir, 1000, DEST).unwrap();
        assert_eq!(report.tmp_removed, 1);
        assert!(report.rejected.is_empty() && report.others.is_empty());
        assert!(dir.join("README").exists());
        assert_eq!(s.len(), 3);
        assert_eq!(s.total_bytes(), size);
        assert_eq!(ids(&s), ["id0", "id1", "id2"]);
        // New pushes sort after the old ones.
        s.push("id3", b"x").unwrap();
        assert_eq!(s.entries.back().unwrap().chunk_id(), "id3");
        assert_eq!(s.pop_front().unwrap().chunk_id(), "id0");
        assert_eq!(s.len(), 3);
        assert!(!front.path.exists());
        let second = s.entries[1].clone();
        assert!(s.remove(&second));
        assert!(!s.remove(&second));
        assert!(!second.path.exists());
        assert_eq!(ids(&s), ["id1", "id3"]);
    }

    #[test]
    fn full_spool_evicts_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let one = |id: &str, n: usize| {
            let tmp2 = tempfile::tempdir().unwrap();
            let (mut s, _) = Spool::open(&tmp2.path().join("x"), 1 << 20, DEST).unwrap();
            s.push(id, &vec![b'a'; n]).unwrap();
            s.total_bytes()
        };
        let size = one("a", 10);
        let (mut s, _) = Spool::open(&dir, 2 * size + size / 2, DEST).unwrap();
        s.push("a", &[b'a'; 10]).unwrap();
        s.push("b", &[b'b'; 10]).unwrap();
        let out = s.push("c", &[b'c'; 10]).unwrap();
        assert_eq!(out.evicted.len(), 1);
        assert_eq!(out.evicted[0].chunk_id(), "a");
        assert!(!out.evicted[0].path.exists());
        assert_eq!(s.total_bytes(), 2 * size);
        let out = s.push("big", &[b'x'; 300]).unwrap();
        assert!(out.too_large);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn other_destinations_are_kept_not_sent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let (mut a, _) = Spool::open(&dir, 1 << 20, "host-a/1").unwrap();
        a.push("fora", b"{}").unwrap();
        drop(a);
        let (mut b, report) = Spool::open(&dir, 1 << 20, "host-b/2").unwrap();
        assert_eq!(report.others.get("host-a/1"), Some(&1));
        assert!(b.is_empty(), "nothing to send to host-b");
        assert_eq!(b.others(), 1);
        assert_eq!(b.front(), None);
        b.push("forb", b"{}").unwrap();
        assert_eq!(b.front().unwrap().chunk_id(), "forb");
        // The other destination's file, renamed under this one's name, is refused on read.
        let other = b.entries[0].clone();
        assert!(!other.ours);
        let fake = SpoolEntry {
            ours: true,
            ..other.clone()
        };
        assert!(b.read(&fake).unwrap_err().contains("meant for host-a/1"));
        drop(b);
        let (a, report) = Spool::open(&dir, 1 << 20, "host-a/1").unwrap();
        assert_eq!(report.others.get("host-b/2"), Some(&1));
        assert_eq!(a.front().unwrap().chunk_id(), "fora");
    }

    #[test]
    fn files_the_agent_did_not_write_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let (mut s, _) = Spool::open(&dir, 4096, DEST).unwrap();
        s.push("good", b"{\"x\":1}").unwrap();
        drop(s);
        let name = |n: u32, id: &str| dir.join(format!("{n:020}-{id}.chunk"));
        fs::write(name(1, "noheader"), b"{\"version\":\"2\"}").unwrap();
        fs::write(
            name(2, "wrongid"),
            b"{\"profiler_spool\":1,\"destination\":\"o1.ingest.sentry.io/42\",\"chunk_id\":\"x\",\"length\":2}\n{}",
        )
        .unwrap();
        fs::write(
            name(3, "badlength"),
            b"{\"profiler_spool\":1,\"destination\":\"o1.ingest.sentry.io/42\",\"chunk_id\":\"badlength\",\"length\":9}\n{}",
        )
        .unwrap();
        fs::write(name(4, "huge"), vec![b'x'; 8192]).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", name(5, "link")).unwrap();
        fs::create_dir(name(6, "dir")).unwrap();
        let (s, report) = Spool::open(&dir, 4096, DEST).unwrap();
        let why: BTreeMap<String, String> = report
            .rejected
            .iter()
            .map(|(p, w)| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    w.clone(),
                )
            })
            .collect();
        assert_eq!(why.len(), 6, "{why:?}");
        let of = |id: &str| why.iter().find(|(k, _)| k.contains(id)).unwrap().1.clone();
        assert!(of("noheader").contains("no header line"), "{why:?}");
        assert!(of("wrongid").contains("names chunk \"x\""), "{why:?}");
        assert!(of("badlength").contains("9 payload bytes"), "{why:?}");
        assert!(of("huge").contains("larger than any chunk"), "{why:?}");
        assert!(of("link").contains("symbolic link"), "{why:?}");
        assert!(of("-dir").contains("not a regular file"), "{why:?}");
        for (p, _) in &report.rejected {
            assert!(
                fs::symlink_metadata(p).is_err() || p.is_dir(),
                "{p:?} removed"
            );
        }
        assert_eq!(ids(&s), ["good"]);
        assert_eq!(s.read(s.front().unwrap()).unwrap(), b"{\"x\":1}");
        assert!(
            fs::read_to_string("/etc/hostname").is_ok(),
            "the link's target is untouched"
        );
    }

    #[test]
    fn refuses_directories_others_control() {
        let tmp = tempfile::tempdir().unwrap();
        let open = |d: &Path| {
            Spool::open(d, 4096, DEST)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let loose = tmp.path().join("loose");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o777)).unwrap();
        let e = open(&loose);
        assert!(e.contains("writable by other users (mode 0777)"), "{e}");
        // A parent the agent did not create may be loose, if root or the agent owns it.
        Spool::open(&loose.join("spool"), 4096, DEST).unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(Spool::open(&file.join("spool"), 4096, DEST).is_err());
        if my_uid() == 0 {
            let theirs = tmp.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let e = open(&theirs);
            assert!(
                e.contains("belongs to uid 65534, not to the agent's uid 0"),
                "{e}"
            );
            fs::set_permissions(&theirs, fs::Permissions::from_mode(0o755)).unwrap();
            let e = open(&theirs.join("spool"));
            assert!(e.contains("its parent") && e.contains("uid 65534"), "{e}");
        }
    }

    #[test]
    fn atomic_writes_never_follow_links() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let out = tmp.path().join("out");
        std::os::unix::fs::symlink(&target, tmp.path().join("out.tmp")).unwrap();
        write_atomic(&out, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert_eq!(fs::read(&out).unwrap(), b"new");
    }
}
