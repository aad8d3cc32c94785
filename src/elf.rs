//! Small facts about ELF images that several stages need: the GNU build-id, the load
//! segments and the `.text` bytes. Pure functions over bytes.

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSection};

/// A `PT_LOAD` segment: where the file says its bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// File offset of the segment.
    pub offset: u64,
    /// Stated virtual address (SVMA) of the segment.
    pub vaddr: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Bytes in memory.
    pub memsz: u64,
    /// True when executable.
    pub exec: bool,
}

/// What the agent needs to know about an ELF image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfFacts {
    /// The GNU build-id note, when present.
    pub build_id: Option<Vec<u8>>,
    /// Every `PT_LOAD`, in file order.
    pub loads: Vec<LoadSegment>,
    /// True for a little-endian image.
    pub little_endian: bool,
}

impl ElfFacts {
    /// `p_vaddr` of the first `PT_LOAD` (0 for PIE executables and shared objects).
    pub fn first_vaddr(&self) -> u64 {
        self.loads.first().map_or(0, |l| l.vaddr)
    }

    /// The SVMA of file offset `file_offset`, found through the `PT_LOAD` that contains it.
    pub fn offset_to_svma(&self, file_offset: u64) -> Option<u64> {
        // Checked: the header fields come from the file and may be anything.
        self.loads.iter().find_map(|l| {
            let rel = file_offset.checked_sub(l.offset)?;
            (rel < l.filesz.max(1)).then(|| l.vaddr.wrapping_add(rel))
        })
    }
}

/// Read the build-id and load segments of a 64-bit ELF image. None when `data` is not a
/// parsable 64-bit ELF file.
pub fn facts(data: &[u8]) -> Option<ElfFacts> {
    let file = ElfFile64::<Endianness>::parse(data).ok()?;
    let endian = file.endian();
    let mut loads = Vec::new();
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) == elf::PT_LOAD {
            loads.push(LoadSegment {
                offset: ph.p_offset(endian),
                vaddr: ph.p_vaddr(endian),
                filesz: ph.p_filesz(endian),
                memsz: ph.p_memsz(endian),
                exec: (ph.p_flags(endian) & elf::PF_X).0 != 0,
            });
        }
    }
    let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
    Some(ElfFacts {
        build_id,
        loads,
        little_endian: file.elf_header().is_little_endian(),
    })
}

/// The bytes of the `.text` section, when present and stored in the file.
pub fn text_section(data: &[u8]) -> Option<&[u8]> {
    let file = ElfFile64::<Endianness>::parse(data).ok()?;
    let text = file.section_by_name(".text")?;
    text.data().ok()
}

/// Lowercase hex of some bytes (a build-id as `code_id`, a debug file name).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_executable_has_facts() {
        let data = std::fs::read("/proc/self/exe").unwrap();
        let f = facts(&data).expect("test binary is ELF64");
        assert!(f.little_endian);
        assert!(f.loads.iter().any(|l| l.exec));
        assert!(text_section(&data).is_some_and(|t| !t.is_empty()));
    }

    #[test]
    fn not_elf() {
        assert!(facts(b"definitely not an ELF file").is_none());
        assert!(facts(&[]).is_none());
    }

    #[test]
    fn hex_formats() {
        assert_eq!(hex(&[0x45, 0x1c, 0x0a]), "451c0a");
    }
}
