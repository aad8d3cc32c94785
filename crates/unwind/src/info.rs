//! The unwind tables of one ELF image: where `.eh_frame`, `.eh_frame_hdr` and
//! `.debug_frame` lie (file bytes and SVMAs), lazily built FDE indexes, and the lookup of
//! the compact rule for a file address (SVMA).

use std::ops::Range;
use std::sync::OnceLock;

use gimli::{
    BaseAddresses, DebugFrame, DebugFrameOffset, EhFrame, EhFrameHdr, EhFrameOffset, EndianSlice,
    LittleEndian, UnwindContext, UnwindSection,
};
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSection};

use super::rule::{CfiRule, compact};
use crate::Bytes;
use crate::arch::{CLONE_BACK, CLONE_WINDOW, SIGRETURN_CODE, clone_child_start};

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// Bytes of one section: `bytes[range]`, loaded at `svma`.
#[derive(Debug, Clone)]
pub(crate) struct SectionData {
    bytes: Bytes,
    range: Range<usize>,
    svma: u64,
}

impl SectionData {
    fn data(&self) -> &[u8] {
        &self.bytes[self.range.clone()]
    }
}

/// One FDE in a sorted index: `[start, end)` in SVMA and its section offset.
#[derive(Debug, Clone, Copy)]
struct FdeSpan {
    start: u64,
    end: u64,
    offset: usize,
}

/// Find the FDE covering `addr` in a sorted index.
fn search(index: &[FdeSpan], addr: u64) -> Option<usize> {
    let i = index.partition_point(|f| f.start <= addr);
    // Overlapping FDEs are rare; look back a little past zero-padded or nested entries.
    index[..i]
        .iter()
        .rev()
        .take(4)
        .find(|f| addr < f.end)
        .map(|f| f.offset)
}

/// A `.debug_frame` table with its lazily built index.
#[derive(Debug)]
struct DebugFrameTable {
    sec: SectionData,
    index: OnceLock<Vec<FdeSpan>>,
}

/// What a table lookup found (returned by value, never stored).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Found {
    /// A rule for the address.
    Rule(CfiRule),
    /// No table covers the address (or its CFI is unusable).
    None,
}

/// Unwind tables of one ELF image, built from its bytes.
///
/// Building is cheap: section headers are read, the `.eh_frame_hdr` search table is
/// validated, and FDE indexes are built only on first use when no search table exists.
#[derive(Debug)]
pub struct UnwindInfo {
    elf: Bytes,
    loads: Vec<LoadSegment>,
    bases: BaseAddresses,
    eh_frame: Option<SectionData>,
    /// Present only when its binary search table is usable.
    eh_frame_hdr: Option<SectionData>,
    /// Own FDE index for `.eh_frame` when there is no usable hdr table.
    eh_index: OnceLock<Vec<FdeSpan>>,
    debug_frames: Vec<DebugFrameTable>,
}

fn section_data(bytes: &Bytes, file_range: Option<(u64, u64)>, svma: u64) -> Option<SectionData> {
    let (off, size) = file_range?;
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    if end > bytes.len() || start == end {
        return None;
    }
    Some(SectionData {
        bytes: bytes.clone(),
        range: start..end,
        svma,
    })
}

/// `.debug_frame` of an ELF file, decompressed when needed.
fn debug_frame_of(file: &ElfFile64<'_, Endianness>, bytes: &Bytes) -> Option<SectionData> {
    let sec = file.section_by_name(".debug_frame")?;
    let svma = sec.address();
    match sec.compressed_file_range().ok()?.format {
        object::CompressionFormat::None => section_data(bytes, sec.file_range(), svma),
        _ => {
            let data = sec.uncompressed_data().ok()?.into_owned();
            let len = data.len();
            (len > 0).then(|| SectionData {
                bytes: Bytes::from_owner(data),
                range: 0..len,
                svma,
            })
        }
    }
}

/// Map an SVMA to a file offset through the load segments.
/// A `PT_LOAD` segment: where the file says its bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LoadSegment {
    /// File offset of the segment.
    offset: u64,
    /// Stated virtual address (SVMA) of the segment.
    vaddr: u64,
    /// Bytes in the file.
    filesz: u64,
}

fn svma_to_offset(loads: &[LoadSegment], svma: u64) -> Option<(usize, u64)> {
    // Checked: the segment fields come from the file and may be anything.
    loads.iter().find_map(|l| {
        let rel = svma.checked_sub(l.vaddr)?;
        if rel >= l.filesz {
            return None;
        }
        let off = usize::try_from(l.offset.checked_add(rel)?).ok()?;
        Some((off, l.filesz - rel))
    })
}

impl UnwindInfo {
    /// Parse the unwind sections of an ELF image (file bytes, or an image read from memory
    /// such as the vDSO). A corrupt or missing section yields an info with fewer tables,
    /// not an error, unless the bytes are not an ELF file at all.
    pub fn from_elf(elf: Bytes) -> Result<UnwindInfo, String> {
        let mut info = UnwindInfo {
            elf: elf.clone(),
            loads: Vec::new(),
            bases: BaseAddresses::default(),
            eh_frame: None,
            eh_frame_hdr: None,
            eh_index: OnceLock::new(),
            debug_frames: Vec::new(),
        };
        let file = match ElfFile64::<Endianness>::parse(&*elf) {
            Ok(f) => f,
            Err(e) => {
                return match object::FileKind::parse(&*elf) {
                    // A 32-bit ELF: nothing an x86_64 unwinder can use.
                    Ok(object::FileKind::Elf32) => Ok(info),
                    _ => Err(format!("not an ELF64 image: {e}")),
                };
            }
        };
        if !file.elf_header().is_little_endian() {
            return Ok(info);
        }
        let endian = file.endian();
        info.loads = file
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == object::elf::PT_LOAD)
            .map(|ph| LoadSegment {
                offset: ph.p_offset(endian),
                vaddr: ph.p_vaddr(endian),
                filesz: ph.p_filesz(endian),
            })
            .collect();

        let mut bases = BaseAddresses::default();
        if let Some(text) = file.section_by_name(".text") {
            bases = bases.set_text(text.address());
        }
        if let Some(got) = file.section_by_name(".got") {
            bases = bases.set_got(got.address());
        }
        let mut eh_frame = file
            .section_by_name(".eh_frame")
            .and_then(|s| section_data(&elf, s.file_range(), s.address()));
        let mut hdr = file
            .section_by_name(".eh_frame_hdr")
            .and_then(|s| section_data(&elf, s.file_range(), s.address()));
        if hdr.is_none() {
            // No section headers (or no hdr section): the program header still finds it.
            let endian = file.endian();
            hdr = file
                .elf_program_headers()
                .iter()
                .find(|ph| ph.p_type(endian) == object::elf::PT_GNU_EH_FRAME)
                .and_then(|ph| {
                    section_data(
                        &elf,
                        Some((ph.p_offset(endian), ph.p_filesz(endian))),
                        ph.p_vaddr(endian),
                    )
                });
        }
        if let Some(h) = &hdr {
            bases = bases.set_eh_frame_hdr(h.svma);
        }
        // Where the hdr says `.eh_frame` is; used to find it without section headers and
        // to validate the search table against the section we have.
        let hdr_eh_ptr = hdr.as_ref().and_then(|h| {
            let parsed = EhFrameHdr::new(h.data(), LittleEndian)
                .parse(&bases, 8)
                .ok()?;
            let ptr = parsed.eh_frame_ptr().direct().ok()?;
            Some((ptr, parsed.table().is_some()))
        });
        if eh_frame.is_none()
            && let Some((ptr, _)) = hdr_eh_ptr
            && let Some((off, len)) = svma_to_offset(&info.loads, ptr)
        {
            eh_frame = section_data(&elf, Some((off as u64, len)), ptr);
        }
        if let Some(eh) = &eh_frame {
            bases = bases.set_eh_frame(eh.svma);
        }
        let hdr_ok =
            matches!((hdr_eh_ptr, &eh_frame), (Some((ptr, true)), Some(eh)) if ptr == eh.svma);
        info.eh_frame_hdr = if hdr_ok { hdr } else { None };
        info.eh_frame = eh_frame;
        info.bases = bases;
        if let Some(df) = debug_frame_of(&file, &elf) {
            info.debug_frames.push(DebugFrameTable {
                sec: df,
                index: OnceLock::new(),
            });
        }
        Ok(info)
    }

    /// Add `.debug_frame` from a separate debug file for addresses `.eh_frame` does not
    /// cover. The debug file must describe the same SVMAs as the original (as a
    /// `.gnu_debuglink` or build-id debug file does). Files without one are ignored.
    pub fn add_debug_file(&mut self, debug_elf: Bytes) {
        let Ok(file) = ElfFile64::<Endianness>::parse(&*debug_elf) else {
            return;
        };
        if !file.elf_header().is_little_endian() || self.debug_frames.len() >= 250 {
            return;
        }
        if let Some(df) = debug_frame_of(&file, &debug_elf) {
            self.debug_frames.push(DebugFrameTable {
                sec: df,
                index: OnceLock::new(),
            });
        }
    }

    /// True when the image has any CFI table.
    pub fn has_cfi(&self) -> bool {
        self.eh_frame.is_some() || !self.debug_frames.is_empty()
    }

    /// True when `.eh_frame` is searched through the `.eh_frame_hdr` table.
    pub fn uses_eh_frame_hdr(&self) -> bool {
        self.eh_frame_hdr.is_some()
    }

    /// Number of `.debug_frame` tables (the image's own and added debug files).
    pub fn debug_frame_count(&self) -> usize {
        self.debug_frames.len()
    }

    /// Copy the image's bytes at `svma` (mapped through its load segments) into `buf`.
    pub(crate) fn read_code(&self, svma: u64, buf: &mut [u8]) -> bool {
        let Some((off, avail)) = svma_to_offset(&self.loads, svma) else {
            return false;
        };
        if (buf.len() as u64) > avail {
            return false;
        }
        match off
            .checked_add(buf.len())
            .and_then(|end| self.elf.get(off..end))
        {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }

    /// True when the code at `svma` is the rt_sigreturn trampoline.
    pub(crate) fn is_sigreturn_at(&self, svma: u64) -> bool {
        let mut buf = [0u8; SIGRETURN_CODE.len()];
        self.read_code(svma, &mut buf) && buf == SIGRETURN_CODE
    }

    /// When `svma` is among the first instructions of a clone child (see
    /// [`clone_child_start`]), the file address of its `thread_start`.
    pub(crate) fn clone_child_start_at(&self, svma: u64) -> Option<u64> {
        let mut buf = [0u8; CLONE_WINDOW];
        let from = svma.checked_sub(CLONE_BACK as u64)?;
        if !self.read_code(from, &mut buf) {
            return None;
        }
        clone_child_start(&buf).map(|rel| svma.wrapping_add(rel as u64))
    }

    /// The bytes of CFI table `table` (0 `.eh_frame`, 1.. `.debug_frame`s).
    pub(crate) fn table_bytes(&self, table: u8) -> Option<&[u8]> {
        match table {
            0 => self.eh_frame.as_ref().map(SectionData::data),
            t => self
                .debug_frames
                .get(usize::from(t) - 1)
                .map(|d| d.sec.data()),
        }
    }

    fn eh_frame_section<'a>(&self, sec: &'a SectionData) -> EhFrame<Slice<'a>> {
        let mut s = EhFrame::new(sec.data(), LittleEndian);
        s.set_address_size(8);
        s
    }

    /// The compact rule for file address `svma`, from `.eh_frame` first, then the
    /// `.debug_frame` tables.
    pub(crate) fn find_rule(&self, svma: u64, ctx: &mut UnwindContext<usize>) -> Found {
        if let Some(eh) = &self.eh_frame
            && let Some(rule) = self.eh_frame_rule(eh, svma, ctx)
        {
            return Found::Rule(rule);
        }
        for (i, table) in self.debug_frames.iter().enumerate() {
            if let Some(rule) = self.debug_frame_rule(table, (i + 1) as u8, svma, ctx) {
                return Found::Rule(rule);
            }
        }
        Found::None
    }

    fn eh_frame_rule(
        &self,
        eh: &SectionData,
        svma: u64,
        ctx: &mut UnwindContext<usize>,
    ) -> Option<CfiRule> {
        let section = self.eh_frame_section(eh);
        let bases = &self.bases;
        let offset = match &self.eh_frame_hdr {
            Some(hdr) => {
                let parsed = EhFrameHdr::new(hdr.data(), LittleEndian)
                    .parse(bases, 8)
                    .ok()?;
                let table = parsed.table()?;
                let ptr = table.lookup(svma, bases).ok()?.direct().ok()?;
                // Not `pointer_to_offset`, which underflows on a row pointing before the
                // section; the hdr was checked to point at this `.eh_frame`.
                EhFrameOffset(usize::try_from(ptr.checked_sub(eh.svma)?).ok()?)
            }
            None => {
                let index = self.eh_index.get_or_init(|| build_index(&section, bases));
                EhFrameOffset(search(index, svma)?)
            }
        };
        rule_at(&section, bases, offset, svma, ctx, 0)
    }

    fn debug_frame_rule(
        &self,
        table: &DebugFrameTable,
        id: u8,
        svma: u64,
        ctx: &mut UnwindContext<usize>,
    ) -> Option<CfiRule> {
        let mut section = DebugFrame::new(table.sec.data(), LittleEndian);
        section.set_address_size(8);
        let bases = &self.bases;
        let index = table.index.get_or_init(|| build_index(&section, bases));
        let offset = DebugFrameOffset(search(index, svma)?);
        rule_at(&section, bases, offset, svma, ctx, id)
    }
}

/// The compact rule for `svma` from the FDE at `offset` of a CFI section (either kind),
/// None when that FDE does not cover the address.
fn rule_at<'a, S: UnwindSection<EndianSlice<'a, LittleEndian>>>(
    section: &S,
    bases: &BaseAddresses,
    offset: S::Offset,
    svma: u64,
    ctx: &mut UnwindContext<usize>,
    id: u8,
) -> Option<CfiRule> {
    let fde = section
        .fde_from_offset(bases, offset, S::cie_from_offset)
        .ok()?;
    if !fde.contains(svma) {
        return None;
    }
    let signal = fde.is_signal_trampoline();
    let ra = fde.cie().return_address_register();
    let row = fde
        .unwind_info_for_address(section, bases, ctx, svma)
        .ok()?;
    compact(row, ra, signal, id)
}

/// Build a sorted FDE index of a whole CFI section. Parsing stops at the first corrupt
/// entry, keeping what came before.
fn build_index<'a, S>(section: &S, bases: &BaseAddresses) -> Vec<FdeSpan>
where
    S: UnwindSection<Slice<'a>>,
    S::Offset: gimli::UnwindOffset<usize>,
{
    let mut out = Vec::new();
    let mut entries = section.entries(bases);
    // CIEs are shared by many FDEs: remember the last one parsed.
    let mut last_cie: Option<(S::Offset, gimli::CommonInformationEntry<Slice<'a>>)> = None;
    while let Ok(Some(entry)) = entries.next() {
        let gimli::CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial.parse(|s, b, off| {
            if let Some((o, cie)) = &last_cie
                && *o == off
            {
                return Ok(cie.clone());
            }
            let cie = s.cie_from_offset(b, off)?;
            last_cie = Some((off, cie.clone()));
            Ok(cie)
        });
        let Ok(fde) = fde else { continue };
        if fde.len() == 0 {
            continue;
        }
        out.push(FdeSpan {
            start: fde.initial_address(),
            end: fde.initial_address().saturating_add(fde.len()),
            offset: fde.offset(),
        });
    }
    out.sort_by_key(|f| (f.start, f.end));
    out
}
