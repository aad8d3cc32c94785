//! JIT code named by the target itself: the perf map (`/tmp/perf-PID.map`) that JITs write
//! for native profilers (CPython's `-X perf`, `node --perf-basic-prof`, Java's
//! perf-map-agent). Each line is `START SIZE name` (hex, `0x` optional). The file is read
//! inside the target's root (its own `/tmp`), under the pid the target knows itself by (its
//! PID namespace's), and re-read as it grows; later lines for the same address win, as JIT
//! code may be freed and its address reused.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use profiler_symbolize::Root;

/// One JIT function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Its name as the JIT wrote it.
    pub name: String,
}

/// Parse perf map lines; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Entry> {
    let mut parts = line.trim_end().splitn(3, ' ');
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let start = hex(parts.next()?)?;
    let size = hex(parts.next()?)?;
    let name = parts.next()?.trim();
    if size == 0 || name.is_empty() {
        return None;
    }
    Some(Entry {
        start,
        end: start.checked_add(size)?,
        name: name.to_string(),
    })
}

/// Most bytes of perf map kept (a JIT that never stops writing cannot grow the agent
/// without bound).
const MAX_BYTES: u64 = 64 << 20;
/// Re-read at most this often when an address is not found.
const REREAD_INTERVAL: Duration = Duration::from_millis(20);

/// The target's perf map, read as it grows.
pub struct PerfMap {
    root: Root,
    path: PathBuf,
    /// Bytes consumed so far (up to the last complete line).
    offset: u64,
    /// Entries sorted by start, later lines replacing earlier ones at the same start.
    entries: Vec<Entry>,
    last_read: Option<Instant>,
    /// Lines read in all.
    pub lines: u64,
}

impl PerfMap {
    /// The perf map of the process known as `ns_pid` in its own PID namespace, inside
    /// `root`.
    pub fn new(root: Root, ns_pid: i32) -> PerfMap {
        PerfMap {
            root,
            path: PathBuf::from(format!("/tmp/perf-{ns_pid}.map")),
            offset: 0,
            entries: Vec::new(),
            last_read: None,
            lines: 0,
        }
    }

    /// The JIT function holding `addr`: looked up in what was read, and, when absent, in
    /// what the file gained since (at most every few milliseconds).
    pub fn lookup(&mut self, addr: u64) -> Option<&Entry> {
        if self.find(addr).is_none()
            && self
                .last_read
                .is_none_or(|t| t.elapsed() >= REREAD_INTERVAL)
        {
            self.refresh();
        }
        self.find(addr).map(|i| &self.entries[i])
    }

    fn find(&self, addr: u64) -> Option<usize> {
        let i = self.entries.partition_point(|e| e.start <= addr);
        (i > 0 && addr < self.entries[i - 1].end).then(|| i - 1)
    }

    /// Read what the file gained; start over when it was replaced by a shorter one.
    pub fn refresh(&mut self) {
        self.last_read = Some(Instant::now());
        let Some(mut file) = self.root.open(&self.path) else {
            return;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < self.offset {
            self.offset = 0;
            self.entries.clear();
        }
        let want = len.min(MAX_BYTES).saturating_sub(self.offset);
        if want == 0 || file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::with_capacity(want as usize);
        if file.take(want).read_to_end(&mut buf).is_err() {
            return;
        }
        // Only complete lines: the JIT may be writing the last one now.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        self.offset += end as u64 + 1;
        let text = String::from_utf8_lossy(&buf[..=end]);
        let new = parse(&text);
        self.lines += new.len() as u64;
        self.merge(new);
    }

    fn merge(&mut self, new: Vec<Entry>) {
        for e in new {
            let i = self.entries.partition_point(|x| x.start < e.start);
            if self.entries.get(i).is_some_and(|x| x.start == e.start) {
                self.entries[i] = e;
            } else {
                self.entries.insert(i, e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let e = parse(
            "7f9bc4396000 b py::_find_and_load:<frozen importlib._bootstrap>\n\
             0x1000 0x20 LazyCompile:~f /x.js:1\n\
             junk\n\
             2000 0 empty\n\
             3000 10\n",
        );
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].start, 0x7f9bc4396000);
        assert_eq!(e[0].end, 0x7f9bc439600b);
        assert_eq!(
            e[0].name,
            "py::_find_and_load:<frozen importlib._bootstrap>"
        );
        assert_eq!(e[1].name, "LazyCompile:~f /x.js:1");
    }

    #[test]
    fn reads_as_it_grows_and_later_lines_win() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let file = dir.path().join("tmp/perf-77.map");
        let mut m = PerfMap::new(Root::dir(dir.path()), 77);
        assert!(m.lookup(0x1000).is_none(), "no file yet");
        std::fs::write(&file, "1000 10 first\n2000 10 sec").unwrap();
        m.last_read = None;
        assert_eq!(m.lookup(0x1008).unwrap().name, "first");
        m.last_read = None;
        assert!(
            m.lookup(0x2000).is_none(),
            "a line without its newline is not read"
        );
        std::fs::write(&file, "1000 10 first\n2000 10 second\n1000 10 reused\n").unwrap();
        m.last_read = None;
        assert_eq!(m.lookup(0x2001).unwrap().name, "second");
        assert_eq!(m.lookup(0x1000).unwrap().name, "reused");
        assert!(m.lookup(0x1010).is_none());
        assert_eq!(m.lines, 3);
    }
}
