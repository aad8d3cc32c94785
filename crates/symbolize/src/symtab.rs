//! ELF symbol tables (`.symtab`, `.dynsym`) as sorted address ranges: the fallback namer
//! when DWARF is missing or has no function name for an address.

use object::{Object, ObjectSection, ObjectSymbol, SectionFlags, SectionIndex, SymbolKind};

/// One function symbol: `[start, end)` in SVMA space and its raw (mangled) name.
#[derive(Clone, Debug)]
struct Sym {
    start: u64,
    /// Exclusive end: `start + size` for a sized symbol, the end of its section otherwise.
    end: u64,
    /// Ranking among symbols at the same address (lower wins).
    rank: u8,
    name: Box<str>,
}

/// Function symbols of one table, sorted by address, one per address.
#[derive(Clone, Debug, Default)]
pub(crate) struct SymbolTable {
    syms: Vec<Sym>,
}

/// Which of the object's symbol tables to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    /// `.symtab`
    Static,
    /// `.dynsym`
    Dynamic,
}

impl SymbolTable {
    /// Read the function symbols of `file`'s `.symtab` or `.dynsym`. Symbols in executable
    /// sections count even when the section holds no bytes (a separate debug file keeps
    /// `.text` as `SHT_NOBITS`).
    pub(crate) fn read(file: &object::File<'_>, which: Which) -> SymbolTable {
        let section_exec_end = |index: SectionIndex| -> Option<u64> {
            let section = file.section_by_index(index).ok()?;
            let exec = match section.flags() {
                SectionFlags::Elf { sh_flags, .. } => sh_flags.contains(object::elf::SHF_EXECINSTR),
                _ => section.kind() == object::SectionKind::Text,
            };
            exec.then(|| section.address().saturating_add(section.size()))
        };
        let symbols = match which {
            Which::Static => file.symbols(),
            Which::Dynamic => file.dynamic_symbols(),
        };
        let mut syms = Vec::new();
        for symbol in symbols {
            let kind = symbol.kind();
            if !matches!(
                kind,
                SymbolKind::Text | SymbolKind::Unknown | SymbolKind::Label
            ) {
                continue;
            }
            let Some(index) = symbol.section_index() else {
                continue;
            };
            let Some(section_end) = section_exec_end(index) else {
                continue;
            };
            let Ok(name) = symbol.name() else {
                continue;
            };
            // Empty names and ARM-style mapping symbols name nothing.
            if name.is_empty() || name.starts_with('$') || name.starts_with(".L") {
                continue;
            }
            let start = symbol.address();
            let size = symbol.size();
            let end = if size > 0 {
                start.saturating_add(size)
            } else {
                section_end.max(start)
            };
            let rank = u8::from(kind != SymbolKind::Text) * 4
                + u8::from(size == 0) * 2
                + u8::from(!symbol.is_global());
            syms.push(Sym {
                start,
                end,
                rank,
                name: name.into(),
            });
        }
        syms.sort_by(|a, b| a.start.cmp(&b.start).then(a.rank.cmp(&b.rank)));
        syms.dedup_by(|later, first| later.start == first.start);
        // An unsized symbol ends where the next one starts.
        for i in 1..syms.len() {
            let next_start = syms[i].start;
            let prev = &mut syms[i - 1];
            if prev.rank & 2 != 0 {
                prev.end = prev.end.min(next_start);
            }
        }
        syms.shrink_to_fit();
        SymbolTable { syms }
    }

    /// Number of function symbols.
    pub(crate) fn len(&self) -> usize {
        self.syms.len()
    }

    /// The symbol naming `svma`: the nearest symbol at or before it whose range covers it
    /// (an unsized symbol covers up to the next symbol or the end of its section). Returns
    /// the raw name and the symbol's start.
    ///
    /// `function` is the range of the function holding `svma` when the unwind tables say
    /// it (`.eh_frame`). Then a symbol must plausibly be that function: an unsized symbol
    /// names the address only when the function starts at the symbol, and a symbol that
    /// does not cover the address (a stripped library's nearest exported one) names it
    /// when the function starts there too. Otherwise the address stays unnamed.
    pub(crate) fn lookup(&self, svma: u64, function: Option<(u64, u64)>) -> Option<(&str, u64)> {
        let idx = self.syms.partition_point(|s| s.start <= svma);
        let plausible = |sym: &Sym| function.is_none_or(|(start, _)| start == sym.start);
        // The nearest symbol usually decides; a few earlier ones may still cover the
        // address when symbols nest (a label inside a sized function).
        for sym in self.syms[..idx].iter().rev().take(4) {
            let no_size = sym.rank & 2 != 0;
            if svma < sym.end && (!no_size || plausible(sym)) {
                return Some((&sym.name, sym.start));
            }
        }
        let nearest = self.syms[..idx].last()?;
        (function.is_some() && plausible(nearest)).then_some((&nearest.name, nearest.start))
    }
}

/// The address ranges `[start, end)` of the functions the `.eh_frame` of `file` describes,
/// sorted by start: where each function begins, to judge which symbol names an address.
pub(crate) fn function_ranges(file: &object::File<'_>) -> Vec<(u64, u64)> {
    use gimli::{BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindSection};
    let Some(section) = file.section_by_name(".eh_frame") else {
        return Vec::new();
    };
    let Ok(data) = section.data() else {
        return Vec::new();
    };
    let mut bases = BaseAddresses::default().set_eh_frame(section.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    let mut eh = EhFrame::new(data, LittleEndian);
    eh.set_address_size(8);
    let mut out = Vec::new();
    let mut entries = eh.entries(&bases);
    // Bounded: a corrupt table stops the walk, it never loops.
    while let Ok(Some(entry)) = entries.next() {
        if let CieOrFde::Fde(partial) = entry
            && let Ok(fde) = partial.parse(EhFrame::cie_from_offset)
        {
            let start = fde.initial_address();
            out.push((start, start.saturating_add(fde.len())));
        }
        if out.len() > 4_000_000 {
            break;
        }
    }
    out.sort_unstable();
    out
}

/// The range among `ranges` (sorted) that holds `svma`.
pub(crate) fn function_at(ranges: &[(u64, u64)], svma: u64) -> Option<(u64, u64)> {
    let i = ranges.partition_point(|&(start, _)| start <= svma);
    ranges[..i]
        .iter()
        .rev()
        .take(4)
        .find(|&&(_, end)| svma < end)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(syms: &[(u64, u64, bool, &str)]) -> SymbolTable {
        SymbolTable {
            syms: syms
                .iter()
                .map(|&(start, end, sized, name)| Sym {
                    start,
                    end,
                    rank: if sized { 0 } else { 2 },
                    name: name.into(),
                })
                .collect(),
        }
    }

    #[test]
    fn nearest_symbol_only_when_it_is_plausibly_the_function() {
        // exported `a` [0x100, 0x140); a local function at 0x180 (no symbol); unsized `b`
        // at 0x200, then a local function at 0x240.
        let t = table(&[(0x100, 0x140, true, "a"), (0x200, 0x300, false, "b")]);
        // Covered by a sized symbol: named, whatever the unwind tables say.
        assert_eq!(t.lookup(0x120, Some((0x100, 0x140))), Some(("a", 0x100)));
        assert_eq!(t.lookup(0x120, None), Some(("a", 0x100)));
        // Past `a`'s end, in another function: unnamed.
        assert_eq!(t.lookup(0x190, Some((0x180, 0x1c0))), None);
        assert_eq!(t.lookup(0x190, None), None);
        // Past `a`'s stated size but in the function that starts at `a`: named.
        assert_eq!(t.lookup(0x150, Some((0x100, 0x160))), Some(("a", 0x100)));
        // Unsized `b` covers up to the end of its section, but only its own function.
        assert_eq!(t.lookup(0x210, Some((0x200, 0x240))), Some(("b", 0x200)));
        assert_eq!(t.lookup(0x250, Some((0x240, 0x280))), None);
        // Without unwind tables an unsized symbol keeps covering (as perf does).
        assert_eq!(t.lookup(0x250, None), Some(("b", 0x200)));
    }

    #[test]
    fn function_lookup() {
        let r = [(0x100, 0x140), (0x180, 0x1c0)];
        assert_eq!(function_at(&r, 0x100), Some((0x100, 0x140)));
        assert_eq!(function_at(&r, 0x150), None);
        assert_eq!(function_at(&r, 0x1bf), Some((0x180, 0x1c0)));
        assert_eq!(function_at(&r, 0x50), None);
    }
}
