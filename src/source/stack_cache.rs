//! Copy only the part of a thread's stack that can have changed since its previous sample.
//!
//! The outer frames of a thread that has not returned from them do not change: a deep
//! stack (a 2,000-frame recursion, 2 MiB) is mostly the same bytes from one sample to the
//! next. [`StackCache`] keeps a thread's last complete stack. A new capture copies upward
//! from the stack pointer in growing chunks; as soon as the last [`WINDOW`] bytes copied are
//! the bytes the previous capture held at the same addresses, the thread is taken not to
//! have returned past them since, and the rest of the stack is the previous capture's.
//! Whether such a splice is right is then checked again by the unwinder: a stack that does
//! not reach the thread's root ends in a visible `[truncated]` or `[unknown]` frame.
//!
//! The same code completes a perf sample, whose kernel copy holds only the top of the stack:
//! first against the cache (at the time of the sample), else from the live process, after
//! checking that the bytes at the seam are still those the kernel copied
//! ([`Completion::SeamMoved`] when not).
//!
//! Pure logic: memory is read through the closure the caller gives.

/// Bytes at the end of a fresh copy that must equal the previous capture for the rest to be
/// taken from it: several frames' worth of return addresses and saved registers.
pub const WINDOW: usize = 512;

/// Bytes at the end of a kernel copy read again from the live process, which must be
/// unchanged for the live bytes above them to belong to the same stack.
pub const SEAM_OVERLAP: usize = 256;

/// First chunk read from the live process; later chunks double.
pub const FIRST_CHUNK: usize = 16 * 1024;

/// How a capture was completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The whole stack is in the output: `read` bytes read live, `reused` taken from the
    /// previous capture.
    Complete {
        /// Bytes read from the process.
        read: usize,
        /// Bytes reused from the previous capture.
        reused: usize,
    },
    /// A read stopped early (unmapped memory): the output holds what was read.
    Short,
    /// The bytes at the end of the kernel copy changed before they could be read again:
    /// the thread returned past them. The output holds the kernel copy only.
    SeamMoved,
}

/// One thread's last complete stack: the bytes from some address up to the top of its
/// stack mapping, kept aligned at the top so the stack can grow downward in place.
#[derive(Debug, Default)]
pub struct StackCache {
    /// One past the highest address.
    top: u64,
    /// `buf[buf.len() - len..]` holds the bytes `[top - len, top)`.
    buf: Vec<u8>,
    len: usize,
}

impl StackCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget everything (the thread's stack moved, or its process exec'd).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Bytes kept.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keep `bytes`, the whole stack `[sp, top)` copied at once, as the base of the next
    /// capture.
    pub fn keep(&mut self, sp: u64, top: u64, bytes: &[u8]) {
        if top != self.top {
            self.top = top;
            self.len = 0;
        }
        if sp + bytes.len() as u64 == top {
            self.store(sp, bytes);
        } else {
            self.len = 0;
        }
    }

    /// Append to `out` (the fresh bytes `[sp, sp + out.len())` of the capture just
    /// completed) the `reused` bytes above them from the previous capture.
    pub fn append_reused(&self, sp: u64, out: &mut Vec<u8>, reused: usize) {
        if let Some(rest) = self.get(sp + out.len() as u64, reused) {
            out.extend_from_slice(rest);
        }
    }

    /// The cached bytes `[addr, addr + n)`, when all of them are kept.
    fn get(&self, addr: u64, n: usize) -> Option<&[u8]> {
        let start = self.top.checked_sub(self.len as u64)?;
        if addr < start || addr.checked_add(n as u64)? > self.top {
            return None;
        }
        let off = self.buf.len() - self.len + (addr - start) as usize;
        self.buf.get(off..off + n)
    }

    /// Keep `bytes` as the content of `[addr, addr + bytes.len())`, and everything kept
    /// above it; `addr + bytes.len()` must reach the kept part (or the top).
    fn store(&mut self, addr: u64, bytes: &[u8]) {
        let end = addr + bytes.len() as u64;
        let start = self.top - self.len as u64;
        if addr >= self.top || end < start {
            self.len = 0;
            return;
        }
        let new_len = (self.top - addr) as usize;
        if new_len > self.buf.len() {
            // Grow at the front: the top stays at the end.
            let mut grown = vec![0u8; new_len.next_power_of_two().max(4096)];
            let (gl, bl) = (grown.len(), self.buf.len());
            grown[gl - self.len..].copy_from_slice(&self.buf[bl - self.len..]);
            self.buf = grown;
        }
        let off = self.buf.len() - new_len;
        self.buf[off..off + bytes.len()].copy_from_slice(bytes);
        self.len = new_len;
    }

    /// Copy what is needed to make `out` the stack `[sp, top)`. `out` holds the bytes
    /// `[sp, sp + out.len())` already copied (nothing for a stopped thread; the kernel's
    /// copy for a perf sample, then `seam` is true: those bytes are older than what `read`
    /// returns). `read(addr, buf)` copies live memory and returns how many bytes it got.
    /// At most `top - sp` bytes are produced; the caller bounds `top`.
    ///
    /// On [`Completion::Complete`] with `reused > 0`, `out` holds the fresh bytes only:
    /// [`StackCache::append_reused`] adds the rest (a copy that can wait until a stopped
    /// thread runs again).
    pub fn complete(
        &mut self,
        sp: u64,
        top: u64,
        out: &mut Vec<u8>,
        seam: bool,
        mut read: impl FnMut(u64, &mut [u8]) -> usize,
    ) -> Completion {
        if top != self.top {
            self.top = top;
            self.len = 0;
        }
        let want = top.saturating_sub(sp) as usize;
        out.truncate(want);
        let mut have = out.len();
        let mut read_bytes = 0;
        let mut chunk = FIRST_CHUNK;
        let mut seam_pending = seam && have > 0;
        let outcome = loop {
            if have >= want {
                break Completion::Complete {
                    read: read_bytes,
                    reused: 0,
                };
            }
            if have >= WINDOW
                && let Some(c) = self.get(sp + (have - WINDOW) as u64, WINDOW)
                && c == &out[have - WINDOW..have]
                && self.get(sp + have as u64, want - have).is_some()
            {
                // Only the fresh part needs storing: the rest is the cache already.
                self.store(sp, &out[..have]);
                return Completion::Complete {
                    read: read_bytes,
                    reused: want - have,
                };
            }
            let n = chunk.min(want - have);
            if seam_pending {
                // Read the end of the kernel copy again with the first live chunk: it
                // must not have changed.
                seam_pending = false;
                let ov = have.min(SEAM_OVERLAP);
                let mut kept = [0u8; SEAM_OVERLAP];
                kept[..ov].copy_from_slice(&out[have - ov..have]);
                out.resize(have + n, 0);
                let got = read(sp + (have - ov) as u64, &mut out[have - ov..]);
                read_bytes += got;
                if got < ov || out[have - ov..have] != kept[..ov] {
                    out.truncate(have);
                    out[have - ov..].copy_from_slice(&kept[..ov]);
                    return Completion::SeamMoved;
                }
                let added = got - ov;
                out.truncate(have + added);
                have += added;
                if added < n {
                    break Completion::Short;
                }
            } else {
                out.resize(have + n, 0);
                let got = read(sp + have as u64, &mut out[have..]);
                read_bytes += got;
                out.truncate(have + got);
                have += got;
                if got < n {
                    break Completion::Short;
                }
            }
            chunk = chunk.saturating_mul(2);
        };
        if outcome != Completion::Short {
            self.store(sp, &out[..have]);
        } else {
            self.len = 0;
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake stack `[base, base + bytes.len())` that counts the bytes read from it.
    struct Mem {
        base: u64,
        bytes: Vec<u8>,
        read: usize,
    }

    impl Mem {
        fn new(base: u64, len: usize, seed: u8) -> Mem {
            Mem {
                base,
                bytes: (0..len)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                    .collect(),
                read: 0,
            }
        }
        fn top(&self) -> u64 {
            self.base + self.bytes.len() as u64
        }
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> usize {
            let Some(off) = addr.checked_sub(self.base) else {
                return 0;
            };
            let off = off as usize;
            let n = buf.len().min(self.bytes.len().saturating_sub(off));
            buf[..n].copy_from_slice(&self.bytes[off..off + n]);
            self.read += n;
            n
        }
        fn slice(&self, from: u64) -> &[u8] {
            &self.bytes[(from - self.base) as usize..]
        }
    }

    #[test]
    fn unchanged_deep_stack_is_read_once() {
        let mut m = Mem::new(0x10_0000, 2 << 20, 1);
        let top = m.top();
        let sp = m.base + 1000;
        let mut cache = StackCache::new();
        let mut out = Vec::new();
        let c = cache.complete(sp, top, &mut out, false, |a, b| m.read(a, b));
        assert!(matches!(c, Completion::Complete { reused: 0, .. }));
        assert_eq!(out, m.slice(sp));
        // Second capture, the leaf changed (bytes near sp): only the first chunk is read.
        m.bytes[1000..1100].fill(0xee);
        m.read = 0;
        out.clear();
        let c = cache.complete(sp, top, &mut out, false, |a, b| m.read(a, b));
        assert_eq!(out.len(), FIRST_CHUNK, "only the fresh part so far");
        let Completion::Complete { reused, read } = c else {
            panic!("{c:?}")
        };
        assert_eq!(
            (read, reused),
            (FIRST_CHUNK, m.bytes.len() - 1000 - FIRST_CHUNK)
        );
        cache.append_reused(sp, &mut out, reused);
        assert_eq!(out, m.slice(sp));
        assert_eq!(m.read, FIRST_CHUNK);
    }

    #[test]
    fn a_changed_stack_is_read_further_until_it_matches() {
        let mut m = Mem::new(0x10_0000, 256 << 10, 2);
        let top = m.top();
        let sp = m.base + 64;
        let mut cache = StackCache::new();
        let mut out = Vec::new();
        cache.complete(sp, top, &mut out, false, |a, b| m.read(a, b));
        // The thread returned 40 KiB up and called again: everything below changed,
        // including the window at the end of the first two chunks.
        let changed = 40 << 10;
        for b in &mut m.bytes[..changed] {
            *b = b.wrapping_add(1);
        }
        m.read = 0;
        out.clear();
        let c = cache.complete(sp, top, &mut out, false, |a, b| m.read(a, b));
        if let Completion::Complete { reused, .. } = c {
            cache.append_reused(sp, &mut out, reused);
        }
        assert_eq!(out, m.slice(sp), "the spliced copy is the new stack");
        assert_eq!(m.read, FIRST_CHUNK * 3, "16 + 32 KiB read, then the match");
        // A deeper stack (the thread called further down): grows the cache in front.
        let sp2 = m.base + 8;
        m.bytes[8..64].fill(7);
        out.clear();
        let c = cache.complete(sp2, top, &mut out, false, |a, b| m.read(a, b));
        if let Completion::Complete { reused, .. } = c {
            cache.append_reused(sp2, &mut out, reused);
        }
        assert_eq!(out, m.slice(sp2));
        assert_eq!(cache.len(), out.len());
    }

    #[test]
    fn kernel_copy_completed_from_the_cache_or_live_with_a_seam_check() {
        let mut m = Mem::new(0x20_0000, 128 << 10, 3);
        let top = m.top();
        let sp = m.base + 4096;
        let kernel = |m: &Mem| m.slice(sp)[..8192].to_vec();
        let mut cache = StackCache::new();
        // First sample: no cache; the seam is checked and the rest read live.
        let mut out = kernel(&m);
        let c = cache.complete(sp, top, &mut out, true, |a, b| m.read(a, b));
        assert!(matches!(c, Completion::Complete { .. }), "{c:?}");
        assert_eq!(out, m.slice(sp));
        // Second sample: the kernel copy ends as the cache does: nothing read live.
        m.read = 0;
        let mut out = kernel(&m);
        let c = cache.complete(sp, top, &mut out, true, |a, b| m.read(a, b));
        assert_eq!(m.read, 0);
        let Completion::Complete { read: 0, reused } = c else {
            panic!("{c:?}")
        };
        cache.append_reused(sp, &mut out, reused);
        assert_eq!(out, m.slice(sp));
        // Third: the stack changed at the seam, and changed again before the live read
        // (the thread returned past the seam): the kernel copy is all there is.
        for b in &mut m.bytes[8000..12_500] {
            *b ^= 0x55;
        }
        let mut out = kernel(&m);
        for b in &mut m.bytes[8000..12_500] {
            *b ^= 0xff;
        }
        let before = out.clone();
        let c = cache.complete(sp, top, &mut out, true, |a, b| m.read(a, b));
        assert_eq!(c, Completion::SeamMoved);
        assert_eq!(out, before, "the kernel copy is left as it was");
    }

    #[test]
    fn short_reads_and_a_moved_stack() {
        let mut m = Mem::new(0x30_0000, 64 << 10, 4);
        let mut cache = StackCache::new();
        let mut out = Vec::new();
        // The mapping claims more than can be read: what was read, and no cache.
        let c = cache.complete(m.base, m.top() + 4096, &mut out, false, |a, b| m.read(a, b));
        assert_eq!(c, Completion::Short);
        assert_eq!(out.len(), 64 << 10);
        assert!(cache.is_empty());
        // Another top (another stack): the cache starts afresh.
        out.clear();
        cache.complete(m.base, m.top(), &mut out, false, |a, b| m.read(a, b));
        assert_eq!(cache.len(), 64 << 10);
        let mut n = Mem::new(0x40_0000, 32 << 10, 5);
        out.clear();
        cache.complete(n.base, n.top(), &mut out, false, |a, b| n.read(a, b));
        assert_eq!(out, n.slice(n.base));
    }
}
