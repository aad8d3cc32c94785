//! Reading another process's memory with `process_vm_readv`. Read only: the agent never
//! writes to the target.

use std::io::IoSliceMut;

use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid as NixPid;

use crate::types::Pid;
use profiler_unwind::memory::ReadMemory;

/// Read up to `buf.len()` bytes at `addr` of process (or thread) `pid`. Returns how many
/// bytes were read; a read that runs into unmapped memory stops there.
pub fn read(pid: Pid, addr: u64, buf: &mut [u8]) -> usize {
    if buf.is_empty() {
        return 0;
    }
    let len = buf.len();
    let mut local = [IoSliceMut::new(buf)];
    let remote = [RemoteIoVec {
        base: addr as usize,
        len,
    }];
    process_vm_readv(NixPid::from_raw(pid), &mut local, &remote).unwrap_or(0)
}

/// A live process's address space behind `ReadMemory`.
#[derive(Clone, Copy, Debug)]
pub struct LiveProcess(pub Pid);

impl ReadMemory for LiveProcess {
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool {
        read(self.0, addr, buf) == buf.len()
    }
}

impl crate::source::linkmap::ReadBatch for LiveProcess {
    fn read_batch(&self, reqs: &mut [(u64, &mut [u8])]) -> usize {
        // The kernel takes at most IOV_MAX (1024) vectors a call.
        let mut done = 0;
        for chunk in reqs.chunks_mut(1024) {
            let remote: Vec<RemoteIoVec> = chunk
                .iter()
                .map(|(a, b)| RemoteIoVec {
                    base: *a as usize,
                    len: b.len(),
                })
                .collect();
            let want: Vec<usize> = chunk.iter().map(|(_, b)| b.len()).collect();
            let mut local: Vec<IoSliceMut> =
                chunk.iter_mut().map(|(_, b)| IoSliceMut::new(b)).collect();
            // A read stops at the first range that is not mapped: count the ranges filled.
            let mut got =
                process_vm_readv(NixPid::from_raw(self.0), &mut local, &remote).unwrap_or(0);
            for w in want {
                if got < w {
                    return done;
                }
                got -= w;
                done += 1;
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory() {
        let data: Vec<u8> = (0..=255).collect();
        let mut out = vec![0u8; 256];
        let n = read(std::process::id() as Pid, data.as_ptr() as u64, &mut out);
        assert_eq!(n, 256);
        assert_eq!(out, data);
        assert_eq!(read(std::process::id() as Pid, 8, &mut out), 0);
    }

    /// The agent's own dynamic linker list, read as the sampler reads a target's: found
    /// through auxv, unchanged between looks, and what a look costs (printed).
    #[test]
    fn own_link_map_found_and_unchanged() {
        use crate::source::linkmap::{LinkMapWatch, find_r_debug};
        let pid = std::process::id() as Pid;
        let me = LiveProcess(pid);
        let auxv = crate::os::proc::read_auxv(pid).unwrap();
        let at = find_r_debug(&auxv, &me).expect("a dynamically linked test binary");
        let mut w = LinkMapWatch::new(at, &me);
        assert!(w.objects() >= 3, "{} objects", w.objects());
        let n = 20_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            assert!(!w.changed(&me));
        }
        let look = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        let mut b = [0u8; 40];
        let t = std::time::Instant::now();
        for _ in 0..n {
            read(pid, at, &mut b);
        }
        eprintln!(
            "link map of {} objects: {look:.2} µs a look (one 40-byte read: {:.2} µs)",
            w.objects(),
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }

    #[test]
    fn batch_reads_count_full_ranges_up_to_the_first_hole() {
        use crate::source::linkmap::ReadBatch;
        let me = LiveProcess(std::process::id() as Pid);
        let a = [1u8; 64];
        let b = [2u8; 16];
        let (mut x, mut y, mut z) = ([0u8; 64], [0u8; 16], [0u8; 8]);
        let mut reqs: Vec<(u64, &mut [u8])> = vec![
            (a.as_ptr() as u64, &mut x[..]),
            (b.as_ptr() as u64, &mut y[..]),
            (8, &mut z[..]),
        ];
        assert_eq!(me.read_batch(&mut reqs), 2);
        assert_eq!((x, y), (a, b));
        // More ranges than one call takes.
        let mut bufs = vec![[0u8; 4]; 2500];
        let mut reqs: Vec<(u64, &mut [u8])> = bufs
            .iter_mut()
            .map(|b| (a.as_ptr() as u64, &mut b[..]))
            .collect();
        assert_eq!(me.read_batch(&mut reqs), 2500);
        assert!(bufs.iter().all(|b| *b == [1u8; 4]));
    }
}
