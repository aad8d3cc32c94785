//! The disk spool: every chunk not yet accepted by Sentry, one file each, oldest first.
//!
//! Files are `<20-digit unix nanoseconds>-<chunk_id>.chunk` holding the chunk payload JSON,
//! created 0600 in a directory created 0700. Writes go to `<name>.tmp` then `rename`, so a
//! crash mid-write leaves only a `*.tmp` file, which [`Spool::open`] deletes. The total size
//! is bounded: adding a chunk first evicts the oldest ones until it fits. File names sort by
//! age, across runs too, so a new run resumes with the oldest chunk.
//!
//! One process per spool directory: two agents sharing one directory is not supported.

use std::collections::VecDeque;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Extension of spooled chunk files.
pub const SPOOL_EXT: &str = "chunk";

/// Write `data` to `path` atomically: a sibling `*.tmp` file with `mode`, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// One spooled chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolEntry {
    /// File path.
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
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
    /// Oldest chunks deleted to make room.
    pub evicted: Vec<SpoolEntry>,
    /// The new chunk alone is larger than the whole spool: it was not stored.
    pub too_large: bool,
}

/// A bounded directory of pending chunks.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
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

impl Spool {
    /// Open (creating it 0700 if missing) the spool directory, delete leftover `*.tmp` files
    /// and load the chunks an earlier run left, oldest first. Returns the spool and the number
    /// of leftover temporary files removed.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<(Spool, usize)> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mut entries = Vec::new();
        let mut tmp_removed = 0;
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") && is_spool_name(name.trim_end_matches(".tmp")) {
                if fs::remove_file(e.path()).is_ok() {
                    tmp_removed += 1;
                }
                continue;
            }
            if !is_spool_name(name) {
                continue;
            }
            let md = e.metadata()?;
            if md.is_file() {
                entries.push(SpoolEntry {
                    path: e.path(),
                    size: md.len(),
                });
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
                dir: dir.to_path_buf(),
                max_bytes,
                entries: entries.into(),
                total,
                last_stamp,
            },
            tmp_removed,
        ))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of chunks waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes used by the waiting chunks.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The oldest waiting chunk.
    pub fn front(&self) -> Option<&SpoolEntry> {
        self.entries.front()
    }

    /// Store a chunk payload (atomically), evicting the oldest chunks when the spool would
    /// exceed its bound.
    pub fn push(&mut self, chunk_id: &str, payload: &[u8]) -> io::Result<PushOutcome> {
        let size = payload.len() as u64;
        let mut out = PushOutcome::default();
        if size > self.max_bytes {
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
        let path = self.dir.join(format!("{stamp:020}-{id}.{SPOOL_EXT}"));
        write_atomic(&path, payload, 0o600)?;
        self.entries.push_back(SpoolEntry { path, size });
        self.total += size;
        Ok(out)
    }

    /// Read the payload of an entry.
    pub fn read(&self, entry: &SpoolEntry) -> io::Result<Vec<u8>> {
        fs::read(&entry.path)
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

    /// Delete the oldest chunk.
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

    #[test]
    fn push_order_permissions_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let (mut s, _) = Spool::open(&dir, 1000).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for i in 0..3 {
            let out = s
                .push(&format!("id{i}"), format!("payload{i}").as_bytes())
                .unwrap();
            assert_eq!(out, PushOutcome::default());
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.total_bytes(), 24);
        let front = s.front().unwrap().clone();
        assert_eq!(front.chunk_id(), "id0");
        assert_eq!(s.read(&front).unwrap(), b"payload0");
        assert_eq!(
            fs::metadata(&front.path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // A crash mid-write leaves a tmp file; a foreign file is left alone.
        fs::write(dir.join("00000000000000000001-half.chunk.tmp"), b"{\"trunc").unwrap();
        fs::write(dir.join("README"), b"not ours").unwrap();
        drop(s);
        let (mut s, removed) = Spool::open(&dir, 1000).unwrap();
        assert_eq!(removed, 1);
        assert!(dir.join("README").exists());
        assert_eq!(s.len(), 3);
        let ids: Vec<_> = s.entries.iter().map(|e| e.chunk_id().to_string()).collect();
        assert_eq!(ids, ["id0", "id1", "id2"]);
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
        let ids: Vec<_> = s.entries.iter().map(|e| e.chunk_id().to_string()).collect();
        assert_eq!(ids, ["id1", "id3"]);
        assert_eq!(s.total_bytes(), 9);
    }

    #[test]
    fn full_spool_evicts_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(tmp.path(), 25).unwrap();
        s.push("a", &[b'a'; 10]).unwrap();
        s.push("b", &[b'b'; 10]).unwrap();
        let out = s.push("c", &[b'c'; 10]).unwrap();
        assert_eq!(out.evicted.len(), 1);
        assert_eq!(out.evicted[0].chunk_id(), "a");
        assert!(!out.evicted[0].path.exists());
        assert_eq!(s.total_bytes(), 20);
        let out = s.push("big", &[b'x'; 26]).unwrap();
        assert!(out.too_large);
        assert_eq!(s.len(), 2);
        let out = s.push("d", &[b'd'; 25]).unwrap();
        assert_eq!(out.evicted.len(), 2);
        assert_eq!(s.len(), 1);
        assert_eq!(s.front().unwrap().chunk_id(), "d");
    }
}
