//! Copy only the part of a thread's stack that can have changed since its previous sample,
//! and share the rest instead of copying it again.
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
//! The cache holds a small private *head* (the latest fresh bytes) above which a
//! read-only [`SharedTail`] goes up to the top of the stack. A sample gets its fresh bytes
//! (plus whatever of the head lies between them and the tail) as its own buffer, and the
//! tail by reference: consecutive samples of a deep stack share one copy of its outer
//! megabytes instead of each copying them. When the head grows past [`HEAD_MAX`] (the
//! thread's stack changed far down), head and tail are folded into a new tail, once.
//!
//! The same code completes a perf sample, whose kernel copy holds only the top of the stack:
//! first against the cache (at the time of the sample), else from the live process, after
//! checking that the bytes at the seam are still those the kernel copied
//! ([`Completion::SeamMoved`] when not).
//!
//! Pure logic: memory is read through the closure the caller gives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use profiler_unwind::{ReadMemory, StackSnapshot};

/// Bytes at the end of a fresh copy that must equal the previous capture for the rest to be
/// taken from it: several frames' worth of return addresses and saved registers.
pub const WINDOW: usize = 512;

/// Bytes at the end of a kernel copy read again from the live process, which must be
/// unchanged for the live bytes above them to belong to the same stack.
pub const SEAM_OVERLAP: usize = 256;

/// First chunk read from the live process; later chunks double.
pub const FIRST_CHUNK: usize = 16 * 1024;

/// Most bytes a cache keeps privately below its shared tail; beyond, the two are folded
/// into one new tail. Also the largest complete copy kept as a head rather than shared.
pub const HEAD_MAX: usize = 128 * 1024;

/// How a capture was completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The whole stack is in the output (see [`StackCache::splice`]): `read` bytes read
    /// live, `reused` taken from the previous capture.
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

/// Stack bytes `[start, start + bytes.len())`, never written once shared.
#[derive(Debug)]
struct TailBytes {
    /// Unique for the session's life (never reused, unlike an address).
    id: u64,
    start: u64,
    bytes: Vec<u8>,
    /// True once a sample sent on carries these bytes in the in-flight count
    /// ([`SharedTail::claim`]).
    counted: AtomicBool,
}

/// The next [`TailBytes::id`].
static NEXT_TAIL_ID: AtomicU64 = AtomicU64::new(1);

/// The outer part of a captured stack, from `start()` to its top, shared read-only between a
/// thread's cache and the samples taken from it.
#[derive(Clone, Debug)]
pub struct SharedTail {
    bytes: Arc<TailBytes>,
    from: u64,
    /// True for the one sample sent on that counts the buffer's size in flight (the
    /// others share it for free).
    new: bool,
}

impl SharedTail {
    /// First address.
    pub fn start(&self) -> u64 {
        self.from
    }

    /// The bytes from `start()` to the top of the stack.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes.bytes[(self.from - self.bytes.start) as usize..]
    }

    /// Bytes this sample counts against the in-flight bound: all of the shared buffer for
    /// the sample that claimed it ([`SharedTail::claim`]), nothing for the others.
    pub fn counted_bytes(&self) -> usize {
        if self.new { self.bytes.bytes.len() } else { 0 }
    }

    /// Make this sample the one that counts the shared buffer in flight, unless one sent
    /// before already does. Called by the sender before it sends; a sample then dropped
    /// gives the count back ([`SharedTail::unclaim`]), so the next one takes it.
    pub fn claim(&mut self) {
        self.new = !self.bytes.counted.swap(true, Ordering::Relaxed);
    }

    /// Undo [`SharedTail::claim`] for a sample that was not sent after all.
    pub fn unclaim(&mut self) {
        if std::mem::take(&mut self.new) {
            self.bytes.counted.store(false, Ordering::Relaxed);
        }
    }

    /// The shared buffer's identity, unique for the session: two tails with one id hold
    /// the same bytes wherever both reach.
    pub fn buffer_id(&self) -> u64 {
        self.bytes.id
    }

    /// A tail made of `bytes`, which start at `start` (for tests and tools).
    pub fn from_bytes(start: u64, bytes: Vec<u8>) -> SharedTail {
        SharedTail {
            bytes: Arc::new(TailBytes {
                id: NEXT_TAIL_ID.fetch_add(1, Ordering::Relaxed),
                start,
                bytes,
                counted: AtomicBool::new(false),
            }),
            from: start,
            new: false,
        }
    }
}

/// A sample's stack as the unwinder reads it: its own bytes, then the shared tail right
/// above them.
#[derive(Clone, Copy, Debug)]
pub struct SampleStack<'a> {
    /// The sample's own bytes.
    pub head: &'a StackSnapshot,
    /// The bytes above them, when shared.
    pub tail: Option<&'a SharedTail>,
}

impl ReadMemory for SampleStack<'_> {
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool {
        let head_end = self.head.end();
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return false;
        };
        if end <= head_end {
            return self.head.read_bytes(addr, buf);
        }
        let Some(tail) = self.tail.filter(|t| t.start() == head_end) else {
            return false;
        };
        if addr >= head_end {
            let off = (addr - head_end) as usize;
            return match tail.bytes().get(off..off + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            };
        }
        let n = (head_end - addr) as usize;
        let (lo, hi) = buf.split_at_mut(n);
        self.head.read_bytes(addr, lo)
            && tail.bytes().get(..hi.len()).is_some_and(|src| {
                hi.copy_from_slice(src);
                true
            })
    }
}

/// One thread's last complete stack `[head_start, top)`: a private head, then a shared
/// tail up to the top of its stack mapping.
#[derive(Debug, Default)]
pub struct StackCache {
    /// One past the highest address.
    top: u64,
    /// Address of `head[0]`.
    head_start: u64,
    /// The bytes `[head_start, head_start + head.len())`.
    head: Vec<u8>,
    /// The bytes from the end of the head up to `top`, when not all in the head.
    tail: Option<SharedTail>,
    /// A capture was completed from fresh bytes that [`StackCache::splice`] is still to
    /// keep: the cache is only read while a thread is stopped, written after it runs.
    pending: bool,
}

impl StackCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget everything (the thread's stack moved, or its process exec'd).
    pub fn clear(&mut self) {
        self.head.clear();
        self.tail = None;
        self.pending = false;
    }

    /// First address kept, when anything is.
    fn start(&self) -> Option<u64> {
        (!self.head.is_empty() || self.tail.is_some()).then_some(self.head_start)
    }

    fn head_end(&self) -> u64 {
        self.head_start + self.head.len() as u64
    }

    /// Bytes kept.
    pub fn len(&self) -> usize {
        self.start().map_or(0, |s| (self.top - s) as usize)
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.start().is_none()
    }

    /// Bytes kept in the private head (the rest is shared).
    #[cfg(test)]
    fn head_len(&self) -> usize {
        self.head.len()
    }

    /// Keep `bytes`, the whole stack `[sp, top)` copied at once, as the base of the next
    /// capture.
    pub fn keep(&mut self, sp: u64, top: u64, bytes: &[u8]) {
        self.pending = false;
        if top != self.top {
            self.top = top;
            self.clear();
        }
        if sp + bytes.len() as u64 == top {
            self.store(sp, bytes);
        } else {
            self.clear();
        }
    }

    /// After [`Completion::Complete`]: keep `out` (the fresh bytes `[sp, sp + out.len())`
    /// of the capture just completed) as the base of the next capture, and make it the
    /// whole stack, by appending what of the private head lies above them and returning
    /// the shared tail above that. Copies that can wait until a stopped thread runs again.
    pub fn splice(&mut self, sp: u64, out: &mut Vec<u8>) -> Option<SharedTail> {
        if std::mem::take(&mut self.pending) {
            self.store(sp, out);
        }
        if self.head.len() > HEAD_MAX {
            self.fold();
        }
        if self.start() != Some(sp) {
            return None;
        }
        let p = sp + out.len() as u64;
        let head_end = self.head_end();
        if p < head_end {
            out.extend_from_slice(&self.head[(p - self.head_start) as usize..]);
        }
        let mut shared = self.tail.clone()?;
        shared.from = shared.from.max(p);
        Some(shared)
    }

    /// The shared part of a cache used for one capture only (a thread with nowhere to keep
    /// its cache): what [`StackCache::splice`] would return, without keeping anything.
    pub fn into_tail(self) -> Option<SharedTail> {
        self.tail
    }

    /// True when the cache holds `[addr, addr + bytes.len())` and those bytes are `bytes`.
    fn matches(&self, addr: u64, bytes: &[u8]) -> bool {
        let Some(start) = self.start() else {
            return false;
        };
        if addr < start || addr + bytes.len() as u64 > self.top {
            return false;
        }
        let head_end = self.head_end();
        let (mut a, mut b) = (addr, bytes);
        if a < head_end {
            let n = ((head_end - a) as usize).min(b.len());
            let off = (a - self.head_start) as usize;
            if self.head[off..off + n] != b[..n] {
                return false;
            }
            a += n as u64;
            b = &b[n..];
        }
        if b.is_empty() {
            return true;
        }
        self.tail.as_ref().is_some_and(|t| {
            let off = (a - t.start()) as usize;
            t.bytes().get(off..off + b.len()) == Some(b)
        })
    }

    /// Keep `fresh` as the content of `[sp, sp + fresh.len())`, and everything kept above
    /// it; `sp + fresh.len()` must reach the kept part (or the top).
    fn store(&mut self, sp: u64, fresh: &[u8]) {
        let end = sp + fresh.len() as u64;
        let start = self.start().unwrap_or(self.top);
        if sp >= self.top || end < start || end > self.top {
            self.clear();
            return;
        }
        let head_end = self.head_end();
        if end >= head_end || self.head.is_empty() {
            // The fresh bytes cover the whole head: the tail goes on from their end.
            self.head.clear();
            self.head.extend_from_slice(fresh);
            if end == self.top {
                self.tail = None;
            } else if let Some(t) = self.tail.as_mut() {
                t.from = t.from.max(end);
            }
        } else {
            let keep = &self.head[(end - self.head_start) as usize..];
            let mut head = Vec::with_capacity(fresh.len() + keep.len());
            head.extend_from_slice(fresh);
            head.extend_from_slice(keep);
            self.head = head;
        }
        self.head_start = sp;
    }

    /// Fold the head and the tail into one new shared tail.
    fn fold(&mut self) {
        let mut bytes = Vec::with_capacity(self.len());
        bytes.extend_from_slice(&self.head);
        if let Some(t) = &self.tail {
            bytes.extend_from_slice(t.bytes());
        }
        self.head.clear();
        self.tail = Some(SharedTail::from_bytes(self.head_start, bytes));
    }

    /// Take `out`, the whole stack `[sp, top)` just read, as the new shared tail (no copy).
    fn adopt(&mut self, sp: u64, out: &mut Vec<u8>) {
        self.head.clear();
        self.head_start = sp;
        self.tail = Some(SharedTail::from_bytes(sp, std::mem::take(out)));
    }

    /// Copy what is needed to make `out` the stack `[sp, top)`. `out` holds the bytes
    /// `[sp, sp + out.len())` already copied (nothing for a stopped thread; the kernel's
    /// copy for a perf sample, then `seam` is true: those bytes are older than what `read`
    /// returns). `read(addr, buf)` copies live memory and returns how many bytes it got.
    /// At most `top - sp` bytes are produced; the caller bounds `top`.
    ///
    /// On [`Completion::Complete`], `out` holds the fresh bytes only (or nothing, when a
    /// large complete copy was taken over as the new shared tail): [`StackCache::splice`]
    /// adds the rest.
    pub fn complete(
        &mut self,
        sp: u64,
        top: u64,
        out: &mut Vec<u8>,
        seam: bool,
        mut read: impl FnMut(u64, &mut [u8]) -> usize,
    ) -> Completion {
        // A capture never spliced (its sample went nowhere) leaves the cache as it was.
        self.pending = false;
        if top != self.top {
            self.top = top;
            self.clear();
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
                && self.matches(sp + (have - WINDOW) as u64, &out[have - WINDOW..have])
            {
                // Only the fresh part needs storing (by `splice`): the rest is the
                // cache already.
                self.pending = true;
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
        match outcome {
            Completion::Short => self.clear(),
            _ if have > HEAD_MAX => self.adopt(sp, out),
            // The whole stack, read fresh: it replaces the cache at `splice`.
            _ => self.pending = true,
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

    /// The stack a completed capture stands for: its own bytes and the shared tail.
    fn whole(cache: &mut StackCache, sp: u64, mut out: Vec<u8>) -> Vec<u8> {
        let tail = cache.splice(sp, &mut out);
        if let Some(t) = tail {
            assert_eq!(
                t.start(),
                sp + out.len() as u64,
                "the tail starts where the bytes end"
            );
            out.extend_from_slice(t.bytes());
        }
        out
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
        assert!(
            out.is_empty(),
            "a large complete copy becomes the shared tail"
        );
        let mut first_tail = cache.splice(sp, &mut out).expect("shared");
        assert_eq!(first_tail.bytes(), m.slice(sp));
        assert_eq!(first_tail.counted_bytes(), 0, "not claimed yet");
        first_tail.claim();
        assert_eq!(
            first_tail.counted_bytes(),
            m.slice(sp).len(),
            "counted once"
        );
        // Second capture, the leaf changed (bytes near sp): only the first chunk is read.
        m.bytes[1000..1100].fill(0xee);
        m.read = 0;
        let c = cache.complete(sp, top, &mut out, false, |a, b| m.read(a, b));
        assert_eq!(out.len(), FIRST_CHUNK, "only the fresh part so far");
        let Completion::Complete { reused, read } = c else {
            panic!("{c:?}")
        };
        assert_eq!(
            (read, reused),
            (FIRST_CHUNK, m.bytes.len() - 1000 - FIRST_CHUNK)
        );
        let mut second = out.clone();
        let mut tail = cache.splice(sp, &mut second).expect("shared");
        assert!(
            tail.buffer_id() == first_tail.buffer_id(),
            "the outer bytes are not copied again"
        );
        tail.claim();
        assert_eq!(
            tail.counted_bytes(),
            0,
            "the first sample counts the buffer"
        );
        // Had the first sample been dropped, the next one sent would count it.
        first_tail.unclaim();
        tail.claim();
        assert_eq!(tail.counted_bytes(), m.slice(sp).len());
        let view = SampleStack {
            head: &StackSnapshot {
                start: sp,
                bytes: second.clone(),
            },
            tail: Some(&tail),
        };
        // Reads inside the head, across the seam and inside the tail.
        for (addr, len) in [
            (sp, 64),
            (sp + FIRST_CHUNK as u64 - 8, 16),
            (tail.start() + 4096, 32),
        ] {
            let mut buf = vec![0u8; len];
            assert!(view.read_bytes(addr, &mut buf));
            let off = (addr - sp) as usize;
            assert_eq!(buf, m.slice(sp)[off..off + len]);
        }
        assert!(
            !view.read_bytes(top - 4, &mut [0u8; 8]),
            "nothing past the top"
        );
        let out = whole(&mut cache, sp, out);
        assert_eq!(out, m.slice(sp));
        assert_eq!(m.read, FIRST_CHUNK);
    }

    #[test]
    fn a_stack_first_seen_shallow_is_shared_once_it_grows_deep() {
        let mut m = Mem::new(0x60_0000, 1 << 20, 7);
        let top = m.top();
        let mut cache = StackCache::new();
        let sp = top - 64 * 1024;
        let mut out = Vec::new();
        cache.complete(sp, top, &mut out, false, |a, b| m.read(a, b));
        assert!(
            cache.splice(sp, &mut out).is_none(),
            "a shallow stack stays private"
        );
        assert_eq!(cache.head_len(), 64 * 1024);
        // 200 KiB deeper: the fresh bytes and the old head are folded into a shared tail...
        let sp2 = sp - 200 * 1024;
        let mut out = Vec::new();
        let c = cache.complete(sp2, top, &mut out, false, |a, b| m.read(a, b));
        assert!(
            matches!(c, Completion::Complete { reused, .. } if reused > 0),
            "{c:?}"
        );
        assert_eq!(whole(&mut cache, sp2, out), m.slice(sp2));
        assert_eq!(cache.head_len(), 0, "folded, not copied into every sample");
        // ...so the next sample copies one chunk and shares the rest.
        m.read = 0;
        let mut out = Vec::new();
        cache.complete(sp2, top, &mut out, false, |a, b| m.read(a, b));
        assert_eq!(m.read, FIRST_CHUNK);
        let mut spliced = out.clone();
        let tail = cache.splice(sp2, &mut spliced).expect("shared");
        assert_eq!(spliced.len(), FIRST_CHUNK);
        assert_eq!(whole(&mut cache, sp2, out), m.slice(sp2));
        assert_eq!(tail.start(), sp2 + FIRST_CHUNK as u64);
    }

    #[test]
    fn a_head_grown_past_its_bound_is_folded_into_a_new_tail() {
        let mut m = Mem::new(0x50_0000, 1 << 20, 6);
        let top = m.top();
        let mut cache = StackCache::new();
        let mut out = Vec::new();
        let sp = m.base + 512 * 1024;
        cache.complete(sp, top, &mut out, false, |a, b| m.read(a, b));
        let old = cache.splice(sp, &mut out).expect("shared");
        // The thread went 400 KiB deeper: those bytes are fresh, the rest matches.
        let sp2 = m.base + 112 * 1024;
        let mut out = Vec::new();
        let c = cache.complete(sp2, top, &mut out, false, |a, b| m.read(a, b));
        assert!(
            matches!(c, Completion::Complete { reused, .. } if reused > 0),
            "{c:?}"
        );
        let mut tail = cache.splice(sp2, &mut out).expect("shared");
        assert_eq!(cache.head_len(), 0, "folded");
        tail.claim();
        assert!(tail.buffer_id() != old.buffer_id());
        assert_eq!(
            tail.counted_bytes(),
            (top - sp2) as usize,
            "the new buffer is counted"
        );
        let mut all = out.clone();
        all.extend_from_slice(tail.bytes());
        assert_eq!(all, m.slice(sp2));
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
        assert!(
            matches!(c, Completion::Complete { reused, .. } if reused > 0),
            "{c:?}"
        );
        let mut out = whole(&mut cache, sp, out);
        assert_eq!(out, m.slice(sp), "the spliced copy is the new stack");
        assert_eq!(m.read, FIRST_CHUNK * 3, "16 + 32 KiB read, then the match");
        // A deeper stack (the thread called further down): grows the cache in front.
        let sp2 = m.base + 8;
        m.bytes[8..64].fill(7);
        out.clear();
        let c = cache.complete(sp2, top, &mut out, false, |a, b| m.read(a, b));
        assert!(matches!(c, Completion::Complete { .. }));
        let out = whole(&mut cache, sp2, out);
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
        let out = whole(&mut cache, sp, out);
        assert_eq!(out, m.slice(sp));
        // Second sample: the kernel copy ends as the cache does: nothing read live.
        m.read = 0;
        let mut out = kernel(&m);
        let c = cache.complete(sp, top, &mut out, true, |a, b| m.read(a, b));
        assert_eq!(m.read, 0);
        let Completion::Complete { read: 0, reused } = c else {
            panic!("{c:?}")
        };
        assert!(reused > 0);
        let out = whole(&mut cache, sp, out);
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
        cache.splice(m.base, &mut out);
        assert_eq!(cache.len(), 64 << 10);
        let mut n = Mem::new(0x40_0000, 32 << 10, 5);
        out.clear();
        cache.complete(n.base, n.top(), &mut out, false, |a, b| n.read(a, b));
        assert_eq!(out, n.slice(n.base));
    }
}
