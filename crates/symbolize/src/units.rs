//! Which DWARF to parse to name an address.
//!
//! addr2line's `Context` reads every unit's abbreviations and line-program header when it
//! is built: 21 MiB and 70 ms for glibc's 2,063 units, and gigabytes for a large debug
//! build, before the first address is named. When no unit refers into another (no
//! `DW_FORM_ref_addr`, no imported or partial units, no supplementary file) every unit
//! stands alone, so [`Names::Lazy`] keeps a small index of address ranges to units (from
//! `.debug_aranges`, else each unit's root entry, read and dropped) and gives a unit a
//! context of its own, over that unit's bytes only, the first time one of its addresses is
//! named. Files whose units do refer into each other (dwz, GCC LTO) keep one context for
//! the whole file ([`Names::Whole`]).

use std::cell::OnceCell;
use std::collections::HashMap;

use gimli::{Reader as _, SectionId};

use super::dwarf::Reader;

/// An addr2line context over our readers.
pub(crate) type Context = addr2line::Context<Reader>;

/// The DWARF sections of one file, as loaded readers (an absent section is empty).
pub(crate) struct Sections {
    pub(crate) readers: Vec<(SectionId, Reader)>,
    /// An empty reader of the file's byte order.
    pub(crate) empty: Reader,
}

impl Sections {
    fn get(&self, id: SectionId) -> &Reader {
        self.readers
            .iter()
            .find(|(s, _)| *s == id)
            .map_or(&self.empty, |(_, r)| r)
    }

    /// A `gimli::Dwarf` over these sections, with `.debug_info` replaced by `info` when
    /// given (one unit's bytes; then `.debug_aranges`, which names units by their offset in
    /// the whole section, is left out).
    pub(crate) fn dwarf(&self, info: Option<&Reader>) -> gimli::Dwarf<Reader> {
        let loaded = gimli::Dwarf::load(|id| -> Result<Reader, std::convert::Infallible> {
            Ok(match (id, info) {
                (SectionId::DebugInfo, Some(info)) => info.clone(),
                (SectionId::DebugAranges, Some(_)) => self.empty.clone(),
                _ => self.get(id).clone(),
            })
        });
        match loaded {
            Ok(dwarf) => dwarf,
            Err(never) => match never {},
        }
    }
}

/// The DWARF lookups of one module.
pub(crate) enum Names {
    /// One context over the whole file.
    Whole(Box<Context>),
    /// A context per unit, built on demand.
    Lazy(LazyUnits),
}

impl Names {
    /// The lookups over `sections` (plus a supplementary file's), lazy per unit when the
    /// units stand alone and `lazy` allows it. None when the DWARF cannot be read at all.
    pub(crate) fn build(
        mut sections: Sections,
        sup: Option<Sections>,
        lazy: bool,
    ) -> Option<Names> {
        if lazy && sup.is_none() && units_stand_alone(sections.get(SectionId::DebugAbbrev).clone())
        {
            match LazyUnits::index(sections) {
                Ok(units) => return Some(Names::Lazy(units)),
                // `.debug_info` does not walk: let addr2line make what it can of it.
                Err(back) => sections = back,
            }
        }
        let mut dwarf = sections.dwarf(None);
        if let Some(sup) = sup {
            dwarf.set_sup(sup.dwarf(None));
        }
        Context::from_dwarf(dwarf)
            .ok()
            .map(|c| Names::Whole(Box::new(c)))
    }

    /// The contexts that may name `svma`, in the order to ask them.
    pub(crate) fn contexts(&self, svma: u64) -> Vec<&Context> {
        match self {
            Names::Whole(ctx) => vec![ctx],
            Names::Lazy(units) => units.contexts(svma),
        }
    }

    /// For lazily read files: the units indexed and how many have been parsed.
    pub(crate) fn unit_counts(&self) -> Option<(usize, usize)> {
        match self {
            Names::Whole(_) => None,
            Names::Lazy(units) => Some(units.counts()),
        }
    }
}

/// One unit of a lazily read file.
struct Unit {
    /// Offset and length (header included) of the unit in `.debug_info`.
    start: usize,
    len: usize,
    /// Its own context, once built (None when it could not be).
    ctx: OnceCell<Option<Box<Context>>>,
}

/// The unit index of a file whose units stand alone.
pub(crate) struct LazyUnits {
    sections: Sections,
    units: Vec<Unit>,
    /// Address ranges `[begin, end)` to unit indexes, sorted by `begin`.
    ranges: Vec<(u64, u64, usize)>,
    /// `max_end[i]`: the largest `end` among `ranges[..=i]`.
    max_end: Vec<u64>,
}

impl LazyUnits {
    /// Index the compilation units of `sections`: their place in `.debug_info` and their
    /// address ranges. The sections back when `.debug_info` cannot be walked.
    fn index(sections: Sections) -> Result<LazyUnits, Sections> {
        let dwarf = sections.dwarf(None);
        // The address ranges `.debug_aranges` gives per unit offset.
        let mut aranges: HashMap<usize, Vec<(u64, u64)>> = HashMap::new();
        let mut headers = dwarf.debug_aranges.headers();
        while let Ok(Some(header)) = headers.next() {
            let list = aranges.entry(header.debug_info_offset().0).or_default();
            let mut entries = header.entries();
            // Entries that fail to parse (an address overflow) are skipped.
            while let Some(entry) = entries.next().transpose() {
                if let Ok(entry) = entry
                    && entry.length() != 0
                {
                    let r = entry.range();
                    list.push((r.begin, r.end));
                }
            }
        }

        let mut units = Vec::new();
        let mut ranges = Vec::new();
        let mut headers = dwarf.units();
        loop {
            let header = match headers.next() {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(_) => {
                    drop(dwarf);
                    return Err(sections);
                }
            };
            let Some(start) = header.debug_info_offset() else {
                continue;
            };
            let start = start.0;
            let len = header.length_including_self();
            match header.type_() {
                gimli::UnitType::Compilation
                | gimli::UnitType::Skeleton(_)
                | gimli::UnitType::SplitCompilation(_) => {}
                // Type units hold no code; partial units only what others import.
                _ => continue,
            }
            let id = units.len();
            units.push(Unit {
                start,
                len,
                ctx: OnceCell::new(),
            });
            match aranges.get(&start).filter(|l| !l.is_empty()) {
                Some(list) => ranges.extend(list.iter().map(|&(b, e)| (b, e, id))),
                None => ranges.extend(
                    unit_ranges(&dwarf, header)
                        .into_iter()
                        .map(|(b, e)| (b, e, id)),
                ),
            }
        }
        ranges.retain(|&(b, e, _)| b < e);
        ranges.sort_unstable();
        let mut max = 0;
        let max_end = ranges
            .iter()
            .map(|&(_, e, _)| {
                max = max.max(e);
                max
            })
            .collect();
        drop(dwarf);
        Ok(LazyUnits {
            sections,
            units,
            ranges,
            max_end,
        })
    }

    /// The units whose ranges hold `svma`, their contexts built if need be; the unit with
    /// the nearest range start first.
    fn contexts(&self, svma: u64) -> Vec<&Context> {
        self.units_at(svma)
            .into_iter()
            .filter_map(|id| self.context(id))
            .collect()
    }

    /// The indexes of the units whose ranges hold `svma`, the nearest range start first.
    fn units_at(&self, svma: u64) -> Vec<usize> {
        let mut ids: Vec<usize> = Vec::new();
        let mut i = self.ranges.partition_point(|&(b, _, _)| b <= svma);
        while i > 0 && self.max_end[i - 1] > svma {
            i -= 1;
            let (_, end, id) = self.ranges[i];
            if svma < end && !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// The context of unit `id`, built on first use.
    fn context(&self, id: usize) -> Option<&Context> {
        let unit = &self.units[id];
        unit.ctx
            .get_or_init(|| {
                let mut info = self.sections.get(SectionId::DebugInfo).clone();
                info.skip(unit.start).ok()?;
                info.truncate(unit.len).ok()?;
                let dwarf = self.sections.dwarf(Some(&info));
                Context::from_dwarf(dwarf).ok().map(Box::new)
            })
            .as_deref()
    }

    /// Units indexed, and how many have a context built.
    fn counts(&self) -> (usize, usize) {
        let built = self.units.iter().filter(|u| u.ctx.get().is_some()).count();
        (self.units.len(), built)
    }
}

/// The address ranges of a unit without `.debug_aranges`: its root entry's
/// `DW_AT_ranges` or `DW_AT_low_pc`/`DW_AT_high_pc`, else its line program's sequences.
/// The parsed unit is dropped on return.
fn unit_ranges(dwarf: &gimli::Dwarf<Reader>, header: gimli::UnitHeader<Reader>) -> Vec<(u64, u64)> {
    let Ok(unit) = dwarf.unit(header) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(mut iter) = dwarf.unit_ranges(&unit) {
        while let Ok(Some(r)) = iter.next() {
            out.push((r.begin, r.end));
        }
    }
    if out.is_empty()
        && let Some(program) = unit.line_program.clone()
        && let Ok((_, sequences)) = program.sequences()
    {
        out.extend(sequences.iter().map(|s| (s.start, s.end)));
    }
    out
}

/// True when no abbreviation in `.debug_abbrev` lets a unit refer into another unit or
/// file: no `DW_FORM_ref_addr`, `DW_FORM_GNU_ref_alt`, `DW_FORM_ref_sup4/8` or
/// `DW_FORM_indirect` (whose form is only known per entry), and no imported or partial
/// units. False as well when the section does not parse.
fn units_stand_alone(mut abbrev: Reader) -> bool {
    let mut scan = || -> gimli::Result<bool> {
        while !abbrev.is_empty() {
            // A code of 0 ends one unit's table; the next table follows.
            if abbrev.read_uleb128()? == 0 {
                continue;
            }
            let tag = gimli::DwTag(abbrev.read_uleb128_u16()?);
            if tag == gimli::DW_TAG_imported_unit || tag == gimli::DW_TAG_partial_unit {
                return Ok(false);
            }
            abbrev.read_u8()?; // DW_CHILDREN_yes / no
            loop {
                let name = abbrev.read_uleb128()?;
                let form = gimli::DwForm(abbrev.read_uleb128_u16()?);
                if name == 0 && form.0 == 0 {
                    break;
                }
                if form == gimli::DW_FORM_implicit_const {
                    abbrev.read_sleb128()?;
                }
                if matches!(
                    form,
                    gimli::DW_FORM_ref_addr
                        | gimli::DW_FORM_GNU_ref_alt
                        | gimli::DW_FORM_ref_sup4
                        | gimli::DW_FORM_ref_sup8
                        | gimli::DW_FORM_indirect
                ) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    };
    scan().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dwarf::SharedBytes;
    use bytes::Bytes;
    use gimli::{EndianReader, RunTimeEndian};

    fn reader(bytes: Vec<u8>) -> Reader {
        EndianReader::new(SharedBytes(Bytes::from_owner(bytes)), RunTimeEndian::Little)
    }

    /// One abbreviation: code, tag and (attribute name, form) pairs, all one byte.
    type Abbrev<'a> = (u8, u8, &'a [(u8, u8)]);

    /// An abbreviation table: the entries, then the 0 terminator.
    fn table(entries: &[Abbrev<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (code, tag, attrs) in entries {
            out.extend([*code, *tag, 1]);
            for (name, form) in *attrs {
                out.extend([*name, *form]);
            }
            out.extend([0, 0]);
        }
        out.push(0);
        out
    }

    #[test]
    fn plain_units_stand_alone() {
        // compile_unit with name/low_pc/high_pc; subprogram with abstract_origin as ref4.
        let mut bytes = table(&[(1, 0x11, &[(0x03, 0x08), (0x11, 0x01), (0x12, 0x07)])]);
        bytes.extend(table(&[(1, 0x2e, &[(0x31, 0x13)])]));
        assert!(units_stand_alone(reader(bytes)));
        assert!(units_stand_alone(reader(Vec::new())));
    }

    #[test]
    fn cross_unit_references_are_found() {
        // abstract_origin as DW_FORM_ref_addr in the second table.
        let mut bytes = table(&[(1, 0x11, &[(0x03, 0x08)])]);
        bytes.extend(table(&[(1, 0x2e, &[(0x31, 0x10)])]));
        assert!(!units_stand_alone(reader(bytes)));
        // An imported unit.
        assert!(!units_stand_alone(reader(table(&[(1, 0x3d, &[])]))));
        // A partial unit.
        assert!(!units_stand_alone(reader(table(&[(1, 0x3c, &[])]))));
        // DW_FORM_indirect: the form is only known per entry.
        assert!(!units_stand_alone(reader(table(&[(
            1,
            0x2e,
            &[(0x31, 0x16)]
        )]))));
        // A truncated section does not count as standing alone.
        assert!(!units_stand_alone(reader(vec![1, 0x11])));
    }

    #[test]
    fn implicit_const_values_are_skipped() {
        // DW_FORM_implicit_const (0x21) carries an SLEB value in the table: 0x10 here,
        // which must not be read as a ref_addr form.
        let bytes = vec![1, 0x2e, 0, 0x3a, 0x21, 0x10, 0x31, 0x13, 0, 0, 0];
        assert!(units_stand_alone(reader(bytes)));
    }

    #[test]
    fn overlapping_ranges_find_every_unit() {
        let units = LazyUnits {
            sections: Sections {
                readers: Vec::new(),
                empty: reader(Vec::new()),
            },
            units: Vec::new(),
            ranges: vec![
                (0x100, 0x900, 0),
                (0x200, 0x300, 1),
                (0x400, 0x500, 2),
                (0x420, 0x430, 2),
            ],
            max_end: vec![0x900, 0x900, 0x900, 0x900],
        };
        assert_eq!(units.units_at(0x425), vec![2, 0]);
        assert_eq!(units.units_at(0x450), vec![2, 0]);
        assert_eq!(units.units_at(0x350), vec![0]);
        assert_eq!(units.units_at(0x250), vec![1, 0]);
        assert_eq!(units.units_at(0x8ff), vec![0]);
        assert!(units.units_at(0x900).is_empty());
        assert!(units.units_at(0x50).is_empty());
    }
}
