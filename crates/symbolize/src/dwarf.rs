//! DWARF sections of an ELF file as gimli readers over the shared file bytes (no copy for
//! uncompressed sections; compressed ones are inflated once), and the addr2line lookup of
//! one address into raw frames (innermost first).

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use addr2line::{LookupContinuation, LookupResult, SplitDwarfLoad};
use gimli::{EndianReader, RunTimeEndian, SectionId};
use object::{CompressionFormat, Object, ObjectSection};

use super::debugfile;
use super::root::Root;
use super::units::Sections;
use bytes::Bytes;

/// Shared file bytes as a gimli reader backing store.
#[derive(Clone)]
pub(crate) struct SharedBytes(pub(crate) Bytes);

impl Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

// SAFETY: `Bytes` is an `Arc` of an immutable owner (a `Vec<u8>` or a read-only `Mmap`)
// that is never mutated through it; the slice it derefs to lives in that owner's heap
// allocation or mapping, whose address does not change when the `Bytes` (or the `Arc`) is
// moved or cloned, and stays alive as long as any clone exists.
unsafe impl gimli::StableDeref for SharedBytes {}
// SAFETY: cloning a `SharedBytes` clones the `Arc`; both clones deref to the same slice.
unsafe impl gimli::CloneStableDeref for SharedBytes {}

/// The gimli reader used for all DWARF data.
pub(crate) type Reader = EndianReader<RunTimeEndian, SharedBytes>;

/// True when `file` has a non-empty `.debug_info` (or `.zdebug_info`) section with bytes in
/// the file.
pub(crate) fn has_debug_info(file: &object::File<'_>) -> bool {
    file.section_by_name(".debug_info").is_some_and(|s| {
        s.compressed_file_range()
            .is_ok_and(|r| r.uncompressed_size > 0 && r.compressed_size > 0)
    })
}

/// A reader over one section of `file` (whose bytes are `data`): a window onto `data` when
/// the section is stored plainly, a fresh buffer when it is compressed. An absent or
/// unreadable section is empty.
fn section_reader(
    data: &Bytes,
    file: &object::File<'_>,
    name: &str,
    endian: RunTimeEndian,
) -> Reader {
    let empty = || EndianReader::new(SharedBytes(Bytes::from_owner(Vec::<u8>::new())), endian);
    let Some(section) = file.section_by_name(name) else {
        return empty();
    };
    let Ok(range) = section.compressed_file_range() else {
        return empty();
    };
    if range.format == CompressionFormat::None {
        let (Ok(start), Ok(len)) = (
            usize::try_from(range.offset),
            usize::try_from(range.uncompressed_size),
        ) else {
            return empty();
        };
        if start.checked_add(len).is_none_or(|end| end > data.len()) {
            return empty();
        }
        return EndianReader::new(SharedBytes(data.clone()), endian).range(start..start + len);
    }
    match section.uncompressed_data() {
        Ok(bytes) => EndianReader::new(SharedBytes(Bytes::from_owner(bytes.into_owned())), endian),
        Err(_) => empty(),
    }
}

/// Load the DWARF sections of `file` (bytes `data`) that naming reads. Nothing is parsed
/// yet beyond locating (and, when compressed, inflating) the sections.
pub(crate) fn load(data: &Bytes, file: &object::File<'_>) -> Sections {
    load_sections(data, file, false)
}

/// Load the sections of a main file, or of a split DWARF (`.dwo`) file when `dwo`.
fn load_sections(data: &Bytes, file: &object::File<'_>, dwo: bool) -> Sections {
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let empty = EndianReader::new(SharedBytes(Bytes::from_owner(Vec::<u8>::new())), endian);
    // Location lists, macros and type units are never read to name an address; skipping
    // them spares inflating megabytes (glibc's compressed .debug_loclists alone is 1.4 MiB).
    let wanted = [
        SectionId::DebugAbbrev,
        SectionId::DebugAddr,
        SectionId::DebugAranges,
        SectionId::DebugInfo,
        SectionId::DebugLine,
        SectionId::DebugLineStr,
        SectionId::DebugRanges,
        SectionId::DebugRngLists,
        SectionId::DebugStr,
        SectionId::DebugStrOffsets,
    ];
    let readers = wanted
        .into_iter()
        .filter_map(|id| {
            let name = if dwo { id.dwo_name()? } else { id.name() };
            Some((id, section_reader(data, file, name, endian)))
        })
        .collect();
    Sections { readers, empty }
}

/// One frame as addr2line reports it, before demangling.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawFrame {
    /// The DWARF name: a linkage (mangled) name when the DIE has one, else `DW_AT_name`.
    pub name: Option<String>,
    /// The language of the unit the function is in.
    pub language: Option<gimli::DwLang>,
    /// Full path of the source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
}

/// The frames for `svma`, innermost first; the last one is the real (not inlined) function.
/// Split DWARF (`.dwo`) files are looked up inside `root`. On an error part-way, the frames found so far
/// are returned with the error.
pub(crate) fn find_frames(
    ctx: &addr2line::Context<Reader>,
    svma: u64,
    root: &Root,
) -> (Vec<RawFrame>, Option<gimli::Error>) {
    let mut out = Vec::new();
    let mut iter = match with_split_dwarf(ctx.find_frames(svma), root) {
        Ok(iter) => iter,
        Err(e) => return (out, Some(e)),
    };
    // The unit holding the function, to read source names of C functions.
    let mut unit: Option<Option<gimli::UnitRef<'_, Reader>>> = None;
    loop {
        match iter.next() {
            Ok(Some(frame)) => {
                let (mut name, language) = match &frame.function {
                    Some(f) => (f.raw_name().ok().map(|n| n.into_owned()), f.language),
                    None => (None, None),
                };
                // addr2line prefers the linkage name; in C that is an assembler alias at
                // best (glibc's `__GI_qsort` for `qsort`): use the name from the source.
                if is_c_language(language)
                    && let Some(offset) = frame.dw_die_offset
                {
                    let unit = unit.get_or_insert_with(|| {
                        with_split_dwarf(ctx.find_dwarf_and_unit(svma), root)
                    });
                    if let Some(source_name) = unit.and_then(|u| source_name(u, offset, 8)) {
                        name = Some(source_name);
                    }
                }
                let (file, line) = match &frame.location {
                    Some(loc) => (loc.file.map(str::to_string), loc.line),
                    None => (None, None),
                };
                out.push(RawFrame {
                    name,
                    language,
                    file,
                    line,
                });
            }
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// Run a lookup to its end, loading split DWARF (`.dwo`) files it asks for.
fn with_split_dwarf<L>(mut lookup: LookupResult<L>, root: &Root) -> L::Output
where
    L: LookupContinuation<Buf = Reader>,
{
    loop {
        match lookup {
            LookupResult::Output(output) => return output,
            LookupResult::Load { load, continuation } => {
                let dwo = load_dwo(&load, root);
                lookup = continuation.resume(dwo);
            }
        }
    }
}

/// Find and load the `.dwo` file a skeleton unit names (`DW_AT_dwo_name` relative to
/// `DW_AT_comp_dir`), inside the target's root; its unit must carry the expected dwo id.
/// DWARF packages (`.dwp`) are not searched.
fn load_dwo(load: &SplitDwarfLoad<Reader>, root: &Root) -> Option<Arc<gimli::Dwarf<Reader>>> {
    let text = |r: &Reader| {
        gimli::Reader::to_string_lossy(r)
            .ok()
            .map(|s| s.into_owned())
    };
    let mut path = PathBuf::new();
    if let Some(dir) = load.comp_dir.as_ref().and_then(text) {
        path.push(dir);
    }
    path.push(load.path.as_ref().and_then(text)?);
    if !path.is_absolute() {
        return None;
    }
    let data = debugfile::map_open(root.open(&path)?)?;
    let file = object::File::parse(&*data).ok()?;
    let mut dwarf = load_sections(&data, &file, true).dwarf(None);
    dwarf.make_dwo(&load.parent);
    let mut headers = dwarf.units();
    let mut matches = false;
    while let Ok(Some(header)) = headers.next() {
        if let Ok(unit) = dwarf.unit(header)
            && unit.dwo_id == Some(load.dwo_id)
        {
            matches = true;
            break;
        }
    }
    matches.then(|| Arc::new(dwarf))
}

/// `DW_AT_name` of the DIE at `offset`, following `DW_AT_abstract_origin` and
/// `DW_AT_specification` inside the unit (at most `depth` hops).
fn source_name(
    unit: gimli::UnitRef<'_, Reader>,
    offset: gimli::UnitOffset<usize>,
    depth: u32,
) -> Option<String> {
    let entry = unit.entry(offset).ok()?;
    if let Some(value) = entry.attr_value(gimli::DW_AT_name) {
        let name = unit.attr_string(value).ok()?;
        return Some(gimli::Reader::to_string_lossy(&name).ok()?.into_owned());
    }
    if depth == 0 {
        return None;
    }
    let origin = entry
        .attr_value(gimli::DW_AT_abstract_origin)
        .or_else(|| entry.attr_value(gimli::DW_AT_specification))?;
    match origin {
        gimli::AttributeValue::UnitRef(next) => source_name(unit, next, depth - 1),
        _ => None,
    }
}

/// True for C (any standard version), where linkage names are only assembler aliases.
fn is_c_language(language: Option<gimli::DwLang>) -> bool {
    matches!(
        language,
        Some(
            gimli::DW_LANG_C89
                | gimli::DW_LANG_C
                | gimli::DW_LANG_C99
                | gimli::DW_LANG_C11
                | gimli::DW_LANG_C17
        )
    )
}

/// Only the line table location of `svma`, for when function lookup failed.
pub(crate) fn find_location(ctx: &addr2line::Context<Reader>, svma: u64) -> Option<RawFrame> {
    let loc = ctx.find_location(svma).ok()??;
    Some(RawFrame {
        name: None,
        language: None,
        file: loc.file.map(str::to_string),
        line: loc.line,
    })
}

/// True for the DWARF languages whose function names are qualified paths (C++, Rust):
/// for these a bare `DW_AT_name` loses information the symbol table may still have.
pub(crate) fn is_qualified_language(language: Option<gimli::DwLang>) -> bool {
    matches!(
        language,
        None | Some(
            gimli::DW_LANG_Rust
                | gimli::DW_LANG_C_plus_plus
                | gimli::DW_LANG_C_plus_plus_03
                | gimli::DW_LANG_C_plus_plus_11
                | gimli::DW_LANG_C_plus_plus_14
                | gimli::DW_LANG_C_plus_plus_17
                | gimli::DW_LANG_C_plus_plus_20
                | gimli::DW_LANG_ObjC_plus_plus
                | gimli::DW_LANG_D
        )
    )
}
