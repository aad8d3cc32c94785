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
}
