//! Hostile input for the `/proc/PID/maps` parser: arbitrary bytes and strings never panic,
//! every line the kernel could print parses back to what was printed, and damaged lines
//! are skipped without losing their neighbours. Property tests (proptest): a bounded
//! number of cases in `cargo test`, more with `PROFILER_FUZZ_CASES` (`make fuzz`).

mod hostile_support;

use hostile_support::config;
use profiler::procmaps::{Mapping, find, parse, parse_line, render};
use proptest::prelude::*;

/// Print a mapping the way the kernel's `show_map_vma` does: fixed-width hex fields, the
/// path padded to start at column 73.
fn kernel_line(m: &Mapping) -> String {
    let mut line = format!(
        "{:08x}-{:08x} {}{}{}p {:08x} {:02x}:{:02x} {} ",
        m.start,
        m.end,
        if m.read { 'r' } else { '-' },
        if m.write { 'w' } else { '-' },
        if m.exec { 'x' } else { '-' },
        m.offset,
        m.dev_major,
        m.dev_minor,
        m.inode,
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
    line
}

/// Paths as the kernel prints them: no newline, no leading space (the padding eats it).
fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("[heap]".to_string()),
        Just("[stack]".to_string()),
        Just("[vdso]".to_string()),
        "/[a-zA-Z0-9_. ()-]{0,40}",
        "/[^\n\r]{0,60}",
    ]
}

fn mapping() -> impl Strategy<Value = Mapping> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<(bool, bool, bool)>(),
        any::<u64>(),
        any::<(u32, u32)>(),
        any::<u64>(),
        path(),
        any::<bool>(),
    )
        .prop_map(
            |(a, b, (read, write, exec), offset, (dev_major, dev_minor), inode, path, deleted)| {
                let (start, end) = (a.min(b), a.max(b));
                // A path that itself ends in " (deleted)" is indistinguishable from a
                // deleted file; the kernel has the same ambiguity.
                let path = path.trim_end_matches(" (deleted)").to_string();
                Mapping {
                    start,
                    end,
                    read,
                    write,
                    exec,
                    offset,
                    dev_major,
                    dev_minor,
                    inode,
                    deleted: deleted && !path.is_empty(),
                    path,
                }
            },
        )
}

proptest! {
    #![proptest_config(config(512))]

    /// The agent's own maps text (made from the perf source's mmap records) is the
    /// kernel's, line for line, as printed by the independent `kernel_line` above.
    #[test]
    fn rendered_maps_are_the_kernels_text(maps in proptest::collection::vec(mapping(), 0..8)) {
        let want: String = maps.iter().map(|m| kernel_line(m) + "\n").collect();
        prop_assert_eq!(render(&maps), want);
    }

    /// Any bytes at all (read as the kernel's text would be, lossily): no panic, and
    /// whatever parses is a well-formed mapping.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        for m in parse(&text) {
            prop_assert!(m.start <= m.end);
            prop_assert!(!m.path.contains('\n'));
        }
    }

    /// Arbitrary strings, including ones built from the characters a maps line is made
    /// of, so that more of them get past the first fields.
    #[test]
    fn arbitrary_strings_never_panic(
        text in prop_oneof![
            any::<String>(),
            "[0-9a-f: rwxps/()\\[\\]-]{0,200}",
            "([0-9a-f]{1,16}-[0-9a-f]{1,16} [rwxps-]{0,5} [0-9a-f]{0,17} [0-9a-f]{0,9}:[0-9a-f]{0,9} [0-9]{0,21} *[^\n]{0,20}\n){0,8}",
        ]
    ) {
        let maps = parse(&text);
        prop_assert!(maps.len() <= text.lines().count());
        for line in text.lines() {
            let _ = parse_line(line);
        }
    }

    /// A line the kernel could print parses back to exactly the mapping printed.
    #[test]
    fn kernel_lines_round_trip(m in mapping()) {
        let line = kernel_line(&m);
        prop_assert_eq!(parse_line(&line), Some(m.clone()), "line {:?}", line);
    }

    /// A whole file of such lines, one of them damaged (cut at a random place or with a
    /// character replaced): every intact line is still parsed, in order, and the damaged
    /// one never becomes a mapping the kernel did not print.
    #[test]
    fn damaged_line_does_not_hide_others(
        maps in proptest::collection::vec(mapping(), 1..12),
        victim in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        replace in any::<Option<char>>(),
    ) {
        let lines: Vec<String> = maps.iter().map(kernel_line).collect();
        let v = victim.index(lines.len());
        let line = &lines[v];
        let boundaries: Vec<usize> = line.char_indices().map(|(i, _)| i).collect();
        let at = boundaries[cut.index(boundaries.len())];
        let damaged = match replace {
            None => line[..at].to_string(),
            Some(c) if c != '\n' && c != '\r' => {
                let mut s = line.clone();
                let next = line[at..].chars().next().map_or(0, char::len_utf8);
                s.replace_range(at..at + next, &c.to_string());
                s
            }
            Some(_) => line[..at].to_string(),
        };
        let mut text = String::new();
        for (i, l) in lines.iter().enumerate() {
            text.push_str(if i == v { &damaged } else { l });
            text.push('\n');
        }
        let parsed = parse(&text);
        let others: Vec<&Mapping> = maps.iter().enumerate().filter(|&(i, _)| i != v).map(|(_, m)| m).collect();
        // The intact lines come back in order; the damaged one at most adds one entry.
        prop_assert!(parsed.len() == others.len() || parsed.len() == others.len() + 1);
        let mut it = parsed.iter();
        for want in others {
            prop_assert!(it.any(|m| m == want), "lost {:?}", want);
        }
        if let Some(m) = parse_line(&damaged) {
            prop_assert!(m.start <= m.end);
        }
    }

    /// `find` on any sorted, disjoint list answers exactly the mapping containing the
    /// address, at every boundary and at the extremes.
    #[test]
    fn find_agrees_with_a_linear_scan(
        mut bounds in proptest::collection::vec(any::<u64>(), 0..20),
        probes in proptest::collection::vec(any::<u64>(), 0..20),
    ) {
        bounds.sort_unstable();
        bounds.dedup();
        let maps: Vec<Mapping> = bounds
            .chunks_exact(2)
            .map(|w| parse_line(&format!("{:x}-{:x} r-xp 0 00:00 0", w[0], w[1])).unwrap())
            .collect();
        let mut addrs = probes;
        for m in &maps {
            addrs.extend([m.start, m.end, m.end.wrapping_sub(1), m.start.wrapping_sub(1)]);
        }
        addrs.extend([0, u64::MAX]);
        for a in addrs {
            let linear = maps.iter().find(|m| m.contains(a));
            prop_assert_eq!(find(&maps, a), linear, "address {:#x}", a);
        }
    }
}
