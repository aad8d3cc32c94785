//! Reading the interpreter's state: its thread states (and which kernel thread each one
//! is), and one thread's frame chain. Every read goes through [`ReadMemory`], every loop is
//! bounded: a garbage pointer ends the walk (the stack is marked incomplete), never the
//! agent.

use std::collections::HashMap;

use super::layout::{FrameModel, Layout, OWNED_BY_CSTACK};
use super::{MAX_PY_FRAMES, PyRawFrame, PyRawStack, ReadMemory};

/// Most interpreters and thread states followed.
const MAX_INTERPRETERS: usize = 64;
const MAX_THREADS: usize = 65_536;

/// A memory reader that reads whole 4 KiB pages and keeps the last few: frames of 3.11+ sit
/// next to each other in the interpreter's data stack, so a deep chain costs a few reads
/// rather than one per frame.
pub struct PageCache<'a, M: ReadMemory> {
    mem: &'a M,
    pages: Vec<(u64, Box<[u8; PAGE]>)>,
    next: usize,
}

const PAGE: usize = 4096;
const PAGES: usize = 16;

impl<'a, M: ReadMemory> PageCache<'a, M> {
    /// A cache over `mem`.
    pub fn new(mem: &'a M) -> Self {
        PageCache {
            mem,
            pages: Vec::new(),
            next: 0,
        }
    }

    fn page(&mut self, base: u64) -> Option<&[u8; PAGE]> {
        if let Some(i) = self.pages.iter().position(|(b, _)| *b == base) {
            return Some(&self.pages[i].1);
        }
        let mut buf = Box::new([0u8; PAGE]);
        if !self.mem.read_bytes(base, &mut buf[..]) {
            return None;
        }
        let i = if self.pages.len() < PAGES {
            self.pages.push((base, buf));
            self.pages.len() - 1
        } else {
            let i = self.next;
            self.pages[i] = (base, buf);
            self.next = (self.next + 1) % PAGES;
            i
        };
        Some(&self.pages[i].1)
    }

    /// Fill `buf` from `addr`; false when any byte is unavailable.
    pub fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        self.read_pages(addr, buf) || self.mem.read_bytes(addr, buf)
    }

    fn read_pages(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        let mut done = 0;
        while done < buf.len() {
            let a = match addr.checked_add(done as u64) {
                Some(a) => a,
                None => return false,
            };
            let base = a & !(PAGE as u64 - 1);
            let off = (a - base) as usize;
            let n = (PAGE - off).min(buf.len() - done);
            match self.page(base) {
                Some(p) => buf[done..done + n].copy_from_slice(&p[off..off + n]),
                None => return false,
            }
            done += n;
        }
        true
    }

    /// A u64 at `addr`.
    pub fn u64(&mut self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }
}

fn u64_at(b: &[u8], off: u64) -> u64 {
    let o = off as usize;
    b.get(o..o + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
}

fn i32_at(b: &[u8], off: u64) -> i32 {
    let o = off as usize;
    b.get(o..o + 4)
        .map_or(0, |s| i32::from_le_bytes(s.try_into().unwrap_or([0; 4])))
}

/// A plausible user-space pointer to an 8-byte aligned object.
fn plausible(p: u64) -> bool {
    (4096..(1 << 47)).contains(&p) && p.is_multiple_of(8)
}

/// One thread state of the interpreter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadState {
    /// Its address.
    pub addr: u64,
    /// `thread_id`: the pthread handle.
    pub thread_id: u64,
    /// `native_thread_id` (3.11+): the kernel thread id.
    pub native_id: Option<i32>,
}

/// Every thread state of every interpreter, in list order.
pub fn thread_states<M: ReadMemory>(mem: &M, l: &Layout, runtime: u64) -> Vec<ThreadState> {
    let mut out = Vec::new();
    let mut interp = mem
        .read_u64(runtime + l.runtime_interpreters_head)
        .unwrap_or(0);
    for _ in 0..MAX_INTERPRETERS {
        if !plausible(interp) {
            break;
        }
        let mut ts = mem.read_u64(interp + l.interp_threads_head).unwrap_or(0);
        while plausible(ts) && out.len() < MAX_THREADS {
            let mut b = [0u8; 512];
            let need = (l
                .tstate_thread_id
                .max(l.tstate_native_thread_id.unwrap_or(0))
                .max(l.tstate_next)
                + 8) as usize;
            if need > b.len() || !mem.read_bytes(ts, &mut b[..need]) {
                break;
            }
            out.push(ThreadState {
                addr: ts,
                thread_id: u64_at(&b, l.tstate_thread_id),
                native_id: l.tstate_native_thread_id.map(|o| i32_at(&b, o)),
            });
            let next = u64_at(&b, l.tstate_next);
            if next == ts || out.iter().any(|t| t.addr == next) {
                break;
            }
            ts = next;
        }
        let next = mem.read_u64(interp + l.interp_next).unwrap_or(0);
        if next == interp {
            break;
        }
        interp = next;
    }
    out
}

/// The offset of the kernel thread id in glibc's `struct pthread` on x86_64 (`tid`, after
/// the 704-byte thread control block and list links), tried first.
pub const GLIBC_PTHREAD_TID: u64 = 0x2d0;

/// Find where the kernel thread id sits in the threads' `struct pthread` (before 3.11
/// CPython only knows the pthread handle, which is the address of that struct): the offset
/// at which every thread state's handle points to a distinct tid of the target. glibc's
/// usual offset is tried first, then every 4-byte slot of the first 2 KiB.
pub fn find_pthread_tid_offset<M: ReadMemory>(
    mem: &M,
    states: &[ThreadState],
    tids: &[i32],
) -> Option<u64> {
    if states.is_empty() {
        return None;
    }
    let reads: Vec<Vec<u8>> = states
        .iter()
        .filter_map(|s| {
            let mut b = vec![0u8; 2048];
            (plausible(s.thread_id) && mem.read_bytes(s.thread_id, &mut b)).then_some(b)
        })
        .collect();
    if reads.is_empty() {
        return None;
    }
    let fits = |off: u64| {
        let mut seen = Vec::new();
        reads.iter().all(|b| {
            let v = i32_at(b, off);
            let ok = v > 0 && tids.contains(&v) && !seen.contains(&v);
            seen.push(v);
            ok
        })
    };
    std::iter::once(GLIBC_PTHREAD_TID)
        .chain((0..2044).step_by(4))
        .find(|&o| fits(o))
}

/// Map kernel thread ids to thread states. `pthread_tid`: the offset found by
/// [`find_pthread_tid_offset`], for versions without `native_thread_id`.
pub fn by_tid<M: ReadMemory>(
    mem: &M,
    states: &[ThreadState],
    pthread_tid: Option<u64>,
) -> HashMap<i32, u64> {
    let mut map = HashMap::new();
    for s in states {
        let tid = match s.native_id {
            Some(t) if t > 0 => Some(t),
            _ => pthread_tid.and_then(|off| {
                let mut b = [0u8; 4];
                (plausible(s.thread_id) && mem.read_bytes(s.thread_id + off, &mut b))
                    .then(|| i32::from_le_bytes(b))
            }),
        };
        if let Some(t) = tid.filter(|&t| t > 0) {
            map.insert(t, s.addr);
        }
    }
    map
}

/// Read the frame chain of the thread state at `tstate`, leaf first. Only addresses and
/// offsets are read (a few bytes per frame, through a page cache); code objects are
/// resolved later.
pub fn read_stack<M: ReadMemory>(mem: &M, l: &Layout, tstate: u64, out: &mut PyRawStack) {
    out.frames.clear();
    out.complete = false;
    let mut pc = PageCache::new(mem);
    let Some(mut frame) = pc.u64(tstate + l.tstate_frame) else {
        return;
    };
    if let Some(off) = l.cframe_current_frame {
        if frame == 0 {
            out.complete = true;
            return;
        }
        if !plausible(frame) {
            return;
        }
        frame = match pc.u64(frame + off) {
            Some(f) => f,
            None => return,
        };
    }
    let mut buf = [0u8; 256];
    let size = (l.frame_size as usize).min(buf.len());
    let mut group = 0usize;
    while frame != 0 {
        if out.frames.len() >= MAX_PY_FRAMES || !plausible(frame) {
            return;
        }
        if !pc.read(frame, &mut buf[..size]) {
            return;
        }
        let b = &buf[..size];
        let code = u64_at(b, l.frame_code);
        let back = u64_at(b, l.frame_back);
        match l.model {
            FrameModel::FrameObject { lasti_units } => {
                let lasti = i32_at(b, l.frame_instr);
                let instr = if lasti < 0 {
                    0
                } else if lasti_units {
                    lasti.saturating_mul(2)
                } else {
                    lasti
                };
                out.frames.push(PyRawFrame {
                    code,
                    instr,
                    entry: true,
                });
            }
            FrameModel::Interp311 | FrameModel::Interp312 => {
                let owner = l.frame_owner.map_or(0, |o| b[o as usize]);
                if l.model == FrameModel::Interp312 && owner == OWNED_BY_CSTACK {
                    // The eval loop's entry frame on the C stack: the frames since the last
                    // one were run by one eval-loop call.
                    match out.frames.last_mut() {
                        Some(f) if group > 0 => f.entry = true,
                        _ => out.frames.push(PyRawFrame {
                            code: 0,
                            instr: 0,
                            entry: true,
                        }),
                    }
                    group = 0;
                } else {
                    let instr_ptr = u64_at(b, l.frame_instr);
                    let start = code.wrapping_add(l.code_adaptive.unwrap_or(0));
                    let instr = if instr_ptr >= start && instr_ptr - start < (1 << 30) {
                        (instr_ptr - start) as i32
                    } else {
                        -2
                    };
                    let entry = l.frame_is_entry.is_some_and(|o| b[o as usize] != 0);
                    out.frames.push(PyRawFrame { code, instr, entry });
                    group = if entry { 0 } else { group + 1 };
                }
            }
        }
        if back == frame {
            return;
        }
        frame = back;
    }
    // The outermost frames always end an eval-loop call.
    if let Some(f) = out.frames.last_mut() {
        f.entry = true;
    }
    out.complete = true;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::layout::{Version, table};
    use profiler_unwind::memory::MemoryImage;

    fn v(minor: u8) -> Version {
        Version {
            major: 3,
            minor,
            micro: 0,
        }
    }

    /// A 3.12 image: tstate → cframe → frames A (leaf), B, shim, C, shim.
    #[test]
    fn walks_a_3_12_chain_with_entry_frames() {
        let l = table(v(12)).unwrap();
        let mut img = MemoryImage::default();
        let tstate = 0x10_0000u64;
        let cframe = 0x20_0000u64;
        let frames = [0x30_0000u64, 0x30_1000, 0x30_2000, 0x30_3000, 0x30_4000];
        let mut ts = vec![0u8; 256];
        ts[l.tstate_frame as usize..][..8].copy_from_slice(&cframe.to_le_bytes());
        img.add(tstate, ts);
        let mut cf = vec![0u8; 16];
        cf[..8].copy_from_slice(&frames[0].to_le_bytes());
        img.add(cframe, cf);
        let codes = [0x50_0000u64, 0x51_0000, 0, 0x52_0000, 0];
        for (i, &f) in frames.iter().enumerate() {
            let mut b = vec![0u8; 80];
            b[l.frame_code as usize..][..8].copy_from_slice(&codes[i].to_le_bytes());
            let back = frames.get(i + 1).copied().unwrap_or(0);
            b[l.frame_back as usize..][..8].copy_from_slice(&back.to_le_bytes());
            let instr = codes[i] + l.code_adaptive.unwrap() + 10;
            b[l.frame_instr as usize..][..8].copy_from_slice(&instr.to_le_bytes());
            b[l.frame_owner.unwrap() as usize] = if codes[i] == 0 { OWNED_BY_CSTACK } else { 0 };
            img.add(f, b);
        }
        let mut out = PyRawStack::default();
        read_stack(&img, &l, tstate, &mut out);
        assert!(out.complete);
        let got: Vec<(u64, i32, bool)> = out
            .frames
            .iter()
            .map(|f| (f.code, f.instr, f.entry))
            .collect();
        assert_eq!(
            got,
            [
                (0x50_0000, 10, false),
                (0x51_0000, 10, true),
                (0x52_0000, 10, true)
            ]
        );
    }

    #[test]
    fn a_garbage_or_cyclic_chain_ends_incomplete_and_bounded() {
        let l = table(v(10)).unwrap();
        let mut img = MemoryImage::default();
        let tstate = 0x10_0000u64;
        let f = 0x30_0000u64;
        let mut ts = vec![0u8; 256];
        ts[l.tstate_frame as usize..][..8].copy_from_slice(&f.to_le_bytes());
        img.add(tstate, ts);
        // Two frames pointing at each other: the depth bound ends it.
        let g = 0x30_1000u64;
        for (a, back) in [(f, g), (g, f)] {
            let mut b = vec![0u8; 128];
            b[l.frame_back as usize..][..8].copy_from_slice(&back.to_le_bytes());
            b[l.frame_code as usize..][..8].copy_from_slice(&0x5000u64.to_le_bytes());
            b[l.frame_instr as usize..][..4].copy_from_slice(&3i32.to_le_bytes());
            img.add(a, b);
        }
        let mut out = PyRawStack::default();
        read_stack(&img, &l, tstate, &mut out);
        assert!(!out.complete);
        assert_eq!(out.frames.len(), MAX_PY_FRAMES);
        assert_eq!(out.frames[0].instr, 6, "3.10 f_lasti counts code units");
        // A pointer into nothing.
        let mut ts = vec![0u8; 256];
        ts[l.tstate_frame as usize..][..8].copy_from_slice(&0xdead_b000u64.to_le_bytes());
        let mut img = MemoryImage::default();
        img.add(tstate, ts);
        read_stack(&img, &l, tstate, &mut out);
        assert!(!out.complete);
        assert!(out.frames.is_empty());
    }

    #[test]
    fn pthread_tid_offset_is_found_by_matching_the_targets_tids() {
        let l = table(v(9)).unwrap();
        let mut img = MemoryImage::default();
        // Two thread states whose pthread handles point at structs holding the tid at 0x2d0,
        // and a decoy value at 0x10 that is a tid for only one of them.
        let runtime = 0x1000u64;
        let interp = 0x2000u64;
        let ts = [0x3000u64, 0x4000];
        let pt = [0x10_000u64, 0x20_000];
        let tids = [101i32, 102];
        let mut rt = vec![0u8; 64];
        rt[l.runtime_interpreters_head as usize..][..8].copy_from_slice(&interp.to_le_bytes());
        img.add(runtime, rt);
        let mut ip = vec![0u8; 64];
        ip[l.interp_threads_head as usize..][..8].copy_from_slice(&ts[0].to_le_bytes());
        img.add(interp, ip);
        for i in 0..2 {
            let mut b = vec![0u8; 512];
            let next = if i == 0 { ts[1] } else { 0 };
            b[l.tstate_next as usize..][..8].copy_from_slice(&next.to_le_bytes());
            b[l.tstate_thread_id as usize..][..8].copy_from_slice(&pt[i].to_le_bytes());
            img.add(ts[i], b);
            let mut p = vec![0u8; 4096];
            p[0x2d0..0x2d4].copy_from_slice(&tids[i].to_le_bytes());
            p[0x10..0x14].copy_from_slice(&101i32.to_le_bytes());
            img.add(pt[i], p);
        }
        let states = thread_states(&img, &l, runtime);
        assert_eq!(states.len(), 2);
        let off = find_pthread_tid_offset(&img, &states, &tids);
        assert_eq!(off, Some(GLIBC_PTHREAD_TID));
        let map = by_tid(&img, &states, off);
        assert_eq!(map.get(&101), Some(&ts[0]));
        assert_eq!(map.get(&102), Some(&ts[1]));
        // Without a slot that fits every thread, no offset.
        assert_eq!(find_pthread_tid_offset(&img, &states, &[101]), None);
    }
}
