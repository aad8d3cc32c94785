//! Reading target memory behind a trait, so the unwinder runs the same on a live process,
//! a captured stack or a synthetic image in a test.

/// Read access to an address space.
pub trait ReadMemory {
    /// Fill `buf` from `addr`; false when any byte is unavailable.
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool;

    /// A little-endian u64 at `addr`.
    fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read_bytes(addr, &mut b).then(|| u64::from_le_bytes(b))
    }
}

/// Stack bytes copied from a thread: `bytes[i]` is the byte at address `start + i`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackSnapshot {
    /// Address of the first byte (the stack pointer at capture, or a little below).
    pub start: u64,
    /// The copied bytes.
    pub bytes: Vec<u8>,
}

impl StackSnapshot {
    /// One past the last captured address.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

impl ReadMemory for StackSnapshot {
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(off) = addr.checked_sub(self.start) else {
            return false;
        };
        let Ok(off) = usize::try_from(off) else {
            return false;
        };
        match off
            .checked_add(buf.len())
            .and_then(|end| self.bytes.get(off..end))
        {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// Several disjoint regions of memory, for tests and captured images.
#[derive(Clone, Debug, Default)]
pub struct MemoryImage {
    regions: Vec<StackSnapshot>,
}

impl MemoryImage {
    /// An empty image.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add a region starting at `start`.
    pub fn add(&mut self, start: u64, bytes: Vec<u8>) {
        self.regions.push(StackSnapshot { start, bytes });
    }
}

impl ReadMemory for MemoryImage {
    fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.regions.iter().any(|r| r.read_bytes(addr, buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_bounds() {
        let s = StackSnapshot {
            start: 0x1000,
            bytes: (0u8..16).collect(),
        };
        assert_eq!(
            s.read_u64(0x1000),
            Some(u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]))
        );
        assert_eq!(
            s.read_u64(0x1008),
            Some(u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]))
        );
        assert_eq!(s.read_u64(0x1009), None);
        assert_eq!(s.read_u64(0xfff), None);
        assert_eq!(s.read_u64(u64::MAX - 3), None);
    }
}
