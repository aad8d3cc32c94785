//! Watching the dynamic linker's list of loaded objects, so that a library unloaded and
//! another loaded at the same address is seen in the tick it happens, not at the next read
//! of `/proc/PID/maps`.
//!
//! Every dynamic linker that supports debuggers (glibc's, musl's) publishes a `struct
//! r_debug` whose address it writes into the `DT_DEBUG` entry of the main program's dynamic
//! section. `r_debug.r_map` heads the list of `struct link_map` (load bias, name, dynamic
//! section, next, previous), one per loaded object, and `r_debug.r_state` is not
//! `RT_CONSISTENT` while `dlopen` or `dlclose` changes that list. A debugger puts a
//! breakpoint on `r_brk`; the agent never writes to the target, so it reads instead: the
//! header, every list entry it knows of and their names in one `process_vm_readv`, with one
//! vector each. When anything differs (an entry, a name, the state)
//! the source re-reads the maps before it sends the samples of that tick.
//!
//! Pure: the memory comes through [`ReadBatch`], so tests feed it plain bytes. Limits: the
//! default namespace only (objects loaded with `dlmopen` into another one are seen at the
//! next maps read, as before), and names are compared on their first 256 bytes (a longer
//! path that differs only past that, loaded at the same address, is also left to the maps
//! read).

/// Reading several ranges of the target's memory at once.
pub trait ReadBatch {
    /// Fill each buffer with the bytes at the address paired with it; returns how many of
    /// the requests, from the first, were filled in full.
    fn read_batch(&self, reqs: &mut [(u64, &mut [u8])]) -> usize;
}

const AT_NULL: u64 = 0;
const AT_PHDR: u64 = 3;
const AT_PHNUM: u64 = 5;
const PT_DYNAMIC: u32 = 2;
const PT_PHDR: u32 = 6;
const DT_NULL: u64 = 0;
const DT_DEBUG: u64 = 21;
/// `r_debug.r_state` when the list is not being changed.
const RT_CONSISTENT: u32 = 0;

const PHDR_SIZE: usize = 56;
const R_DEBUG_SIZE: usize = 40;
const LINK_MAP_SIZE: usize = 40;
/// Most program headers and dynamic entries looked at (real programs have a few dozen).
const MAX_PHDRS: u64 = 256;
const MAX_DYNAMIC: usize = 1024;
/// Most objects followed down the list: a corrupt or hostile list ends here.
const MAX_OBJECTS: usize = 4096;
/// Bytes of each name compared.
const NAME_BYTES: usize = 256;

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn read_one(mem: &impl ReadBatch, addr: u64, buf: &mut [u8]) -> bool {
    mem.read_batch(&mut [(addr, buf)]) == 1
}

/// The address of the dynamic linker's `r_debug`, found from the process's auxiliary
/// vector (`/proc/PID/auxv`: where its program headers are in memory) through its dynamic
/// section's `DT_DEBUG` entry. None for a static program, or before the dynamic linker has
/// filled the entry in (a program stopped before its first instruction).
pub fn find_r_debug(auxv: &[u8], mem: &impl ReadBatch) -> Option<u64> {
    let (mut phdr, mut phnum) = (0, 0);
    for pair in auxv.chunks_exact(16) {
        let (key, val) = (u64_at(pair, 0), u64_at(pair, 8));
        match key {
            AT_NULL => break,
            AT_PHDR => phdr = val,
            AT_PHNUM => phnum = val,
            _ => {}
        }
    }
    if phdr == 0 || phnum == 0 || phnum > MAX_PHDRS {
        return None;
    }
    let mut headers = vec![0u8; phnum as usize * PHDR_SIZE];
    if !read_one(mem, phdr, &mut headers) {
        return None;
    }
    let (mut bias, mut dynamic) = (None, None);
    for h in headers.chunks_exact(PHDR_SIZE) {
        let vaddr = u64_at(h, 16);
        match u32_at(h, 0) {
            PT_PHDR => bias = Some(phdr.wrapping_sub(vaddr)),
            PT_DYNAMIC => dynamic = Some(vaddr),
            _ => {}
        }
    }
    // Without PT_PHDR the headers' own address gives no bias; such programs (static,
    // non-PIE) have no dynamic linker to watch anyway.
    let dynamic = bias?.wrapping_add(dynamic?);
    let mut entries = [0u8; 16 * 32];
    for chunk in 0..MAX_DYNAMIC / 32 {
        let at = dynamic + (chunk * entries.len()) as u64;
        if !read_one(mem, at, &mut entries) {
            // The section may end at the end of a page: read entry by entry.
            for i in 0..32 {
                let mut e = [0u8; 16];
                if !read_one(mem, at + i * 16, &mut e) {
                    return None;
                }
                match u64_at(&e, 0) {
                    DT_NULL => return None,
                    DT_DEBUG => return Some(u64_at(&e, 8)).filter(|&a| a != 0),
                    _ => {}
                }
            }
            continue;
        }
        for e in entries.chunks_exact(16) {
            match u64_at(e, 0) {
                DT_NULL => return None,
                DT_DEBUG => return Some(u64_at(e, 8)).filter(|&a| a != 0),
                _ => {}
            }
        }
    }
    None
}

/// One object of the list as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    /// Address of its `link_map`.
    node: u64,
    /// The public part of its `link_map`: bias, name pointer, dynamic section, next, prev.
    fields: [u8; LINK_MAP_SIZE],
    /// Its name up to and including the terminating zero (or the first bytes of it).
    name: Vec<u8>,
}

impl Seen {
    fn name_ptr(&self) -> u64 {
        u64_at(&self.fields, 8)
    }
    fn next(&self) -> u64 {
        u64_at(&self.fields, 24)
    }
}

/// The dynamic linker's list of loaded objects, as last read.
#[derive(Debug)]
pub struct LinkMapWatch {
    r_debug: u64,
    header: [u8; R_DEBUG_SIZE],
    seen: Vec<Seen>,
    /// Reused buffers.
    nodes: Vec<[u8; LINK_MAP_SIZE]>,
    names: Vec<u8>,
    /// The last walk met a cycle or more than [`MAX_OBJECTS`] objects.
    broken: bool,
}

impl LinkMapWatch {
    /// Watch the list of the `r_debug` at `r_debug` (see [`find_r_debug`]), reading it now.
    pub fn new(r_debug: u64, mem: &impl ReadBatch) -> Self {
        let mut w = LinkMapWatch {
            r_debug,
            header: [0; R_DEBUG_SIZE],
            seen: Vec::new(),
            nodes: Vec::new(),
            names: Vec::new(),
            broken: false,
        };
        w.walk(mem);
        w
    }

    /// Objects in the list as last read.
    pub fn objects(&self) -> usize {
        self.seen.len()
    }

    /// True when the last walk found a cycle or an endless list: not a list a dynamic
    /// linker keeps, so the caller stops watching it (it would cost a walk every look).
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// True when the list may have changed since the last look: an object was added,
    /// removed or replaced, it is being changed right now, or it could not be read.
    /// One read of the target's memory (one vector per entry and name) when nothing changed.
    pub fn changed(&mut self, mem: &impl ReadBatch) -> bool {
        if self.same_as_seen(mem) {
            return false;
        }
        let before = (self.header, std::mem::take(&mut self.seen));
        let ok = self.walk(mem);
        // A list that reads the same as before through the slow path is unchanged (a
        // fast-path read that failed at a page edge, say); one that cannot be read, or
        // is being changed, may have changed.
        !ok || self.header != before.0 || self.seen != before.1
    }

    /// The fast path: the header, every known entry and their names in one read,
    /// compared with what was seen.
    fn same_as_seen(&mut self, mem: &impl ReadBatch) -> bool {
        if self.seen.is_empty() || u32_at(&self.header, 24) != RT_CONSISTENT {
            return false;
        }
        let mut header = [0u8; R_DEBUG_SIZE];
        self.nodes.resize(self.seen.len(), [0; LINK_MAP_SIZE]);
        let total: usize = self.seen.iter().map(|s| s.name.len()).sum();
        self.names.clear();
        self.names.resize(total, 0);
        {
            // Names are read where they were: a name that moved comes with a changed
            // entry, which is compared below first.
            let mut reqs: Vec<(u64, &mut [u8])> = Vec::with_capacity(2 * self.seen.len() + 1);
            reqs.push((self.r_debug, &mut header[..]));
            for (s, buf) in self.seen.iter().zip(self.nodes.iter_mut()) {
                reqs.push((s.node, &mut buf[..]));
            }
            let mut rest = &mut self.names[..];
            for s in &self.seen {
                let (buf, tail) = rest.split_at_mut(s.name.len());
                rest = tail;
                if !buf.is_empty() {
                    reqs.push((s.name_ptr(), buf));
                }
            }
            let n = reqs.len();
            if mem.read_batch(&mut reqs) != n {
                return false;
            }
        }
        if header != self.header
            || self
                .nodes
                .iter()
                .zip(&self.seen)
                .any(|(b, s)| *b != s.fields)
        {
            return false;
        }
        let mut at = 0;
        self.seen.iter().all(|s| {
            let same = self.names[at..at + s.name.len()] == s.name[..];
            at += s.name.len();
            same
        })
    }

    /// Read the whole list from the header on. False when it could not be read in full or
    /// is being changed.
    fn walk(&mut self, mem: &impl ReadBatch) -> bool {
        self.seen.clear();
        if !read_one(mem, self.r_debug, &mut self.header) {
            return false;
        }
        let consistent = u32_at(&self.header, 24) == RT_CONSISTENT;
        let mut node = u64_at(&self.header, 8);
        let mut visited = rustc_hash::FxHashSet::default();
        while node != 0 {
            if self.seen.len() >= MAX_OBJECTS || !visited.insert(node) {
                self.broken = true;
                return false;
            }
            let mut fields = [0u8; LINK_MAP_SIZE];
            if !read_one(mem, node, &mut fields) {
                return false;
            }
            let mut s = Seen {
                node,
                fields,
                name: Vec::new(),
            };
            s.name = read_name(mem, s.name_ptr());
            node = s.next();
            self.seen.push(s);
        }
        consistent && node == 0
    }
}

/// A name up to and including its zero byte, at most [`NAME_BYTES`], never read past the
/// end of the page it starts in unless it continues there.
fn read_name(mem: &impl ReadBatch, addr: u64) -> Vec<u8> {
    if addr == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < NAME_BYTES {
        let to_page_end = 4096 - (at % 4096) as usize;
        let len = to_page_end.min(NAME_BYTES - out.len());
        let mut buf = vec![0u8; len];
        if !read_one(mem, at, &mut buf) {
            break;
        }
        if let Some(z) = buf.iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..=z]);
            return out;
        }
        out.extend_from_slice(&buf);
        at += len as u64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    /// A fake address space: byte ranges at addresses; counts the batches read.
    #[derive(Default)]
    struct Fake {
        ranges: RefCell<BTreeMap<u64, Vec<u8>>>,
        batches: Cell<usize>,
    }

    impl Fake {
        fn put(&self, addr: u64, bytes: &[u8]) {
            let mut r = self.ranges.borrow_mut();
            // Overwrite inside an existing range, else add one.
            if let Some((&start, v)) = r.range_mut(..=addr).next_back()
                && addr + bytes.len() as u64 <= start + v.len() as u64
            {
                let o = (addr - start) as usize;
                v[o..o + bytes.len()].copy_from_slice(bytes);
                return;
            }
            r.insert(addr, bytes.to_vec());
        }
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            let r = self.ranges.borrow();
            let Some((&start, v)) = r.range(..=addr).next_back() else {
                return false;
            };
            let o = (addr - start) as usize;
            if o + buf.len() > v.len() {
                return false;
            }
            buf.copy_from_slice(&v[o..o + buf.len()]);
            true
        }
    }

    impl ReadBatch for Fake {
        fn read_batch(&self, reqs: &mut [(u64, &mut [u8])]) -> usize {
            self.batches.set(self.batches.get() + 1);
            let mut n = 0;
            for (a, b) in reqs.iter_mut() {
                if !self.read(*a, b) {
                    break;
                }
                n += 1;
            }
            n
        }
    }

    const R_DEBUG: u64 = 0x10_0000;
    const HEAP: u64 = 0x20_0000;

    fn node(l_addr: u64, name: u64, ld: u64, next: u64, prev: u64) -> Vec<u8> {
        [l_addr, name, ld, next, prev]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    fn header(map: u64, state: u32) -> Vec<u8> {
        let mut h = vec![0u8; R_DEBUG_SIZE];
        h[0..4].copy_from_slice(&1u32.to_le_bytes());
        h[8..16].copy_from_slice(&map.to_le_bytes());
        h[24..28].copy_from_slice(&state.to_le_bytes());
        h
    }

    /// A process with the main program and one library `lib` (same name length whatever
    /// the library), all in one heap range.
    fn process(lib: &str) -> Fake {
        let f = Fake::default();
        f.put(R_DEBUG, &header(HEAP, RT_CONSISTENT));
        let mut heap = vec![0u8; 0x1000];
        heap[..40].copy_from_slice(&node(0, HEAP + 0x200, 0x5000, HEAP + 0x100, 0));
        heap[0x100..0x128].copy_from_slice(&node(0x7000, HEAP + 0x300, 0x7100, 0, HEAP));
        heap[0x200] = 0;
        heap[0x300..0x300 + lib.len()].copy_from_slice(lib.as_bytes());
        // Heap bytes after the name that change all the time must not count.
        heap[0x300 + lib.len() + 1] = 0xaa;
        f.put(HEAP, &heap);
        f
    }

    #[test]
    fn nothing_changed_costs_one_read() {
        let f = process("/lib/liba.so");
        let mut w = LinkMapWatch::new(R_DEBUG, &f);
        assert_eq!(w.objects(), 2);
        f.batches.set(0);
        f.put(HEAP + 0x300 + 13, &[0x55]); // past the name's zero
        assert!(!w.changed(&f));
        assert_eq!(f.batches.get(), 1);
    }

    #[test]
    fn a_library_replaced_in_place_is_a_change() {
        let f = process("/lib/liba.so");
        let mut w = LinkMapWatch::new(R_DEBUG, &f);
        // Same node, same name pointer, same bias and dynamic section: only the name's
        // bytes tell the swap apart.
        f.put(HEAP + 0x300, b"/lib/libb.so");
        assert!(w.changed(&f));
        assert!(!w.changed(&f), "seen once, then the same again");
    }

    #[test]
    fn loads_unloads_and_changes_in_progress() {
        let f = process("/lib/liba.so");
        let mut w = LinkMapWatch::new(R_DEBUG, &f);
        // dlopen in progress.
        f.put(R_DEBUG, &header(HEAP, 1));
        assert!(w.changed(&f));
        assert!(w.changed(&f), "still in progress: may still change");
        f.put(R_DEBUG, &header(HEAP, RT_CONSISTENT));
        assert!(w.changed(&f), "the state itself changed back");
        assert!(!w.changed(&f));
        // A third object appended.
        f.put(
            HEAP + 0x100,
            &node(0x7000, HEAP + 0x300, 0x7100, HEAP + 0x400, HEAP),
        );
        f.put(
            HEAP + 0x400,
            &node(0x9000, HEAP + 0x300, 0x9100, 0, HEAP + 0x100),
        );
        assert!(w.changed(&f));
        assert_eq!(w.objects(), 3);
        // Unloaded again.
        f.put(HEAP + 0x100, &node(0x7000, HEAP + 0x300, 0x7100, 0, HEAP));
        assert!(w.changed(&f));
        assert_eq!(w.objects(), 2);
    }

    #[test]
    fn unreadable_or_cyclic_lists_end() {
        let f = process("/lib/liba.so");
        let mut w = LinkMapWatch::new(R_DEBUG, &f);
        // A pointer into nothing.
        f.put(
            HEAP + 0x100,
            &node(0x7000, HEAP + 0x300, 0x7100, 0xdead_0000, HEAP),
        );
        assert!(w.changed(&f));
        assert!(!w.broken());
        // A cycle: the walk stops at once and says the list is not one to watch.
        f.put(
            HEAP + 0x100,
            &node(0x7000, HEAP + 0x300, 0x7100, HEAP, HEAP),
        );
        assert!(w.changed(&f));
        assert!(w.broken());
        assert_eq!(w.objects(), 2);
        let gone = LinkMapWatch::new(0x1234, &f);
        assert_eq!(gone.objects(), 0);
    }

    #[test]
    fn r_debug_from_auxv_and_dynamic_section() {
        let f = Fake::default();
        let phdr = 0x40_0040u64;
        let mut headers = vec![0u8; 3 * PHDR_SIZE];
        let mut ph = |i: usize, kind: u32, vaddr: u64| {
            headers[i * PHDR_SIZE..i * PHDR_SIZE + 4].copy_from_slice(&kind.to_le_bytes());
            headers[i * PHDR_SIZE + 16..i * PHDR_SIZE + 24].copy_from_slice(&vaddr.to_le_bytes());
        };
        ph(0, PT_PHDR, 0x40);
        ph(1, 1, 0);
        ph(2, PT_DYNAMIC, 0x2000);
        f.put(phdr, &headers);
        let dynamic: Vec<u8> = [(1u64, 5u64), (DT_DEBUG, R_DEBUG), (DT_NULL, 0)]
            .iter()
            .flat_map(|(k, v)| k.to_le_bytes().into_iter().chain(v.to_le_bytes()))
            .collect();
        // The section ends right before an unmapped page: read entry by entry.
        f.put(0x40_0000 + 0x2000, &dynamic);
        let auxv: Vec<u8> = [(AT_PHDR, phdr), (AT_PHNUM, 3), (AT_NULL, 0)]
            .iter()
            .flat_map(|(k, v)| k.to_le_bytes().into_iter().chain(v.to_le_bytes()))
            .collect();
        assert_eq!(find_r_debug(&auxv, &f), Some(R_DEBUG));
        // Not filled in yet (before the dynamic linker ran), or no program headers.
        f.put(0x40_0000 + 0x2018, &0u64.to_le_bytes());
        assert_eq!(find_r_debug(&auxv, &f), None);
        assert_eq!(find_r_debug(&auxv[16..], &f), None);
    }
}
