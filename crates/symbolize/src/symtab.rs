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
    pub(crate) fn lookup(&self, svma: u64) -> Option<(&str, u64)> {
        let idx = self.syms.partition_point(|s| s.start <= svma);
        // The nearest symbol usually decides; a few earlier ones may still cover the
        // address when symbols nest (a label inside a sized function).
        for sym in self.syms[..idx].iter().rev().take(4) {
            if svma < sym.end {
                return Some((&sym.name, sym.start));
            }
        }
        None
    }
}
