//! Cheaply clonable, immutable file contents: an mmap of an ELF file or bytes read from
//! the target (the vDSO), behind one type.

use std::ops::Deref;
use std::sync::Arc;

/// Shared immutable bytes.
#[derive(Clone)]
pub struct Bytes(Arc<dyn AsRef<[u8]> + Send + Sync>);

impl Bytes {
    /// Wrap any owner of bytes (a `Vec<u8>`, a `memmap2::Mmap`).
    pub fn new<T: AsRef<[u8]> + Send + Sync + 'static>(owner: T) -> Self {
        Bytes(Arc::new(owner))
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.len())
    }
}
