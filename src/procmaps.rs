//! Parsing `/proc/PID/maps` text into mappings. Pure: `os::proc` reads the file, this module
//! only understands its lines, so tests feed it literal text.

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address (AVMA).
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Offset in the mapped file.
    pub offset: u64,
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Inode of the mapped file (0 for anonymous memory).
    pub inode: u64,
    /// The path or pseudo-name (`[stack]`, `[vdso]`, `[heap]`); empty for anonymous memory.
    /// A file deleted since it was mapped keeps its path with the ` (deleted)` suffix
    /// removed; see `deleted`.
    pub path: String,
    /// True when the kernel marked the file `(deleted)`.
    pub deleted: bool,
}

impl Mapping {
    /// True for a mapping of a regular file (not anonymous, not a pseudo-name).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }
    /// True when `addr` lies inside.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end
    }
}

/// Parse the whole text of a maps file. Malformed lines are skipped (the kernel's format is
/// stable; a bad line means a truncated read, which must not stop profiling).
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

/// Parse one line: `start-end perms offset major:minor inode   path`.
pub fn parse_line(line: &str) -> Option<Mapping> {
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let trimmed = rest.trim_start_matches(' ');
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (f, r) = trimmed.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let dev = field()?;
    let inode = field()?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end < start {
        return None;
    }
    let perms = perms.as_bytes();
    if perms.len() < 3 {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let mut path = rest.trim_start_matches(' ').to_string();
    let deleted = path.ends_with(" (deleted)");
    if deleted {
        path.truncate(path.len() - " (deleted)".len());
    }
    Some(Mapping {
        start,
        end,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev_major: u32::from_str_radix(major, 16).ok()?,
        dev_minor: u32::from_str_radix(minor, 16).ok()?,
        inode: inode.parse().ok()?,
        path,
        deleted,
    })
}

/// The mapping containing `addr` in a list sorted by address (as the kernel prints it).
pub fn find(maps: &[Mapping], addr: u64) -> Option<&Mapping> {
    let i = maps.partition_point(|m| m.end <= addr);
    maps.get(i).filter(|m| m.contains(addr))
}

/// The stack range holding `sp`: its mapping, or, when `sp` is below the main thread's
/// `[stack]` with no mapping in between, that stack grown down since the maps were read
/// (the kernel extends it on demand): `[sp's page, end of [stack])`. Without this, a
/// recursion that deepens faster than the maps are re-read would be copied only in part.
pub fn find_stack(maps: &[Mapping], sp: u64) -> Option<(u64, u64)> {
    if let Some(m) = find(maps, sp) {
        return Some((m.start, m.end));
    }
    let i = maps.partition_point(|m| m.end <= sp);
    let above = maps.get(i)?;
    (above.path == "[stack]" && sp < above.start).then_some((sp & !0xfff, above.end))
}

/// Put `new` over `maps` (sorted by address), as the kernel does with a mapping made over
/// others: what it covers of them is gone.
pub fn overlay(maps: &mut Vec<Mapping>, new: Mapping) {
    let mut out = Vec::with_capacity(maps.len() + 2);
    for m in maps.drain(..) {
        if m.end <= new.start || m.start >= new.end {
            out.push(m);
            continue;
        }
        if m.start < new.start {
            let mut head = m.clone();
            head.end = new.start;
            out.push(head);
        }
        if m.end > new.end {
            let mut tail = m;
            if tail.inode != 0 {
                tail.offset += new.end - tail.start;
            }
            tail.start = new.end;
            out.push(tail);
        }
    }
    out.push(new);
    out.sort_by_key(|m| m.start);
    *maps = out;
}

/// Maps text for `maps`, in the kernel's layout (private mappings).
pub fn render(maps: &[Mapping]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for m in maps {
        let flag = |b: bool, c: char| if b { c } else { '-' };
        let mut line = format!(
            "{:08x}-{:08x} {}{}{}p {:08x} {:02x}:{:02x} {} ",
            m.start,
            m.end,
            flag(m.read, 'r'),
            flag(m.write, 'w'),
            flag(m.exec, 'x'),
            m.offset,
            m.dev_major,
            m.dev_minor,
            m.inode
        );
        if !m.path.is_empty() {
            while line.len() < 73 {
                line.push(' ');
            }
            line.push_str(&m.path);
            if m.deleted {
                line.push_str(" (deleted)");
            }
        }
        let _ = writeln!(s, "{line}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c8a00000-55d0c8a01000 r--p 00000000 fd:01 1835014                    /usr/bin/demo
55d0c8a01000-55d0c8a02000 r-xp 00001000 fd:01 1835014                    /usr/bin/demo
55d0c9f3e000-55d0c9f5f000 rw-p 00000000 00:00 0                          [heap]
7f1c2a000000-7f1c2a028000 r--p 00000000 103:02 5243000                   /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a028000-7f1c2a1bd000 r-xp 00028000 103:02 5243000                   /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2b000000-7f1c2b001000 r-xp 00000000 00:1f 42                         /tmp/my lib.so (deleted)
7ffd5e9d2000-7ffd5e9f3000 rw-p 00000000 00:00 0                          [stack]
7ffd5e9f8000-7ffd5e9fa000 r-xp 00000000 00:00 0                          [vdso]
7f1c2c000000-7f1c2c021000 rw-p 00000000 00:00 0 
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn stack_grown_below_its_mapping() {
        let mut maps = parse(SAMPLE);
        maps.sort_by_key(|m| m.start);
        // Inside [stack], and just below it (grown since the maps were read).
        assert_eq!(
            find_stack(&maps, 0x7ffd5e9d3000),
            Some((0x7ffd5e9d2000, 0x7ffd5e9f3000))
        );
        assert_eq!(
            find_stack(&maps, 0x7ffd5e9c1234),
            Some((0x7ffd5e9c1000, 0x7ffd5e9f3000))
        );
        // Below another mapping: not a stack.
        assert_eq!(find_stack(&maps, 0x7f1c29fff000), None);
        assert_eq!(
            find_stack(&maps, 0x55d0c9f3e100),
            Some((0x55d0c9f3e000, 0x55d0c9f5f000))
        );
    }

    #[test]
    fn rendered_text_parses_back_and_overlays_cut() {
        let mut maps = parse(SAMPLE);
        assert_eq!(parse(&render(&maps)), maps);
        // A library mapped over the middle of libc's text.
        let new = Mapping {
            start: 0x7f1c2a030000,
            end: 0x7f1c2a040000,
            read: true,
            write: false,
            exec: true,
            offset: 0x1000,
            dev_major: 8,
            dev_minor: 1,
            inode: 77,
            path: "/opt/other.so".into(),
            deleted: false,
        };
        overlay(&mut maps, new.clone());
        let text = render(&maps);
        let back = parse(&text);
        assert_eq!(back, maps);
        assert_eq!(find(&back, 0x7f1c2a031000), Some(&new));
        let head = find(&back, 0x7f1c2a02f000).unwrap();
        assert_eq!(
            (head.start, head.end, head.offset),
            (0x7f1c2a028000, 0x7f1c2a030000, 0x28000)
        );
        let tail = find(&back, 0x7f1c2a040000).unwrap();
        assert_eq!(
            (tail.start, tail.offset),
            (0x7f1c2a040000, 0x28000 + 0x18000)
        );
        assert!(back.windows(2).all(|w| w[0].start < w[1].start));
    }

    #[test]
    fn parses_every_kind_of_line() {
        let maps = parse(SAMPLE);
        assert_eq!(maps.len(), 10);
        let text = &maps[1];
        assert_eq!((text.start, text.end), (0x55d0c8a01000, 0x55d0c8a02000));
        assert!(text.read && !text.write && text.exec);
        assert_eq!(text.offset, 0x1000);
        assert_eq!(
            (text.dev_major, text.dev_minor, text.inode),
            (0xfd, 1, 1835014)
        );
        assert_eq!(text.path, "/usr/bin/demo");
        assert!(text.is_file());
        assert_eq!(maps[3].dev_major, 0x103);
        assert_eq!(maps[2].path, "[heap]");
        assert!(!maps[2].is_file());
        assert_eq!(maps[5].path, "/tmp/my lib.so");
        assert!(maps[5].deleted);
        assert_eq!(maps[7].path, "[vdso]");
        assert_eq!(maps[8].path, "");
        assert_eq!(maps[9].end, 0xffffffffff601000);
    }

    #[test]
    fn skips_malformed_lines() {
        let maps = parse("garbage\n1000-0 r-xp 0 0:0 0\n1000-2000 r-xp zz 00:00 0 x\n1000-2000\n");
        assert!(maps.is_empty());
        assert!(parse("").is_empty());
        // A line cut short after the inode is still a mapping without a path.
        assert_eq!(parse("1000-2000 r-xp 00000000 00:00 0").len(), 1);
    }

    #[test]
    fn find_by_address() {
        let mut maps = parse(SAMPLE);
        maps.sort_by_key(|m| m.start);
        assert_eq!(find(&maps, 0x55d0c8a01800).unwrap().offset, 0x1000);
        assert_eq!(find(&maps, 0x7ffd5e9f2fff).unwrap().path, "[stack]");
        assert!(find(&maps, 0x7ffd5e9f3000).is_none());
        assert!(find(&maps, 0).is_none());
        assert!(find(&maps, u64::MAX).is_none());
    }
}
