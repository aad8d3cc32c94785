#![doc = include_str!("../README.md")]
//!
//! ## Layout
//!
//! `demangle` (names), `debugfile` (finding and mapping debug files), `dwarf`
//! (gimli readers and addr2line lookups), `symtab` (ELF symbol tables); this file holds the
//! [`Symbolizer`] with its module and address caches.

mod debugfile;
mod demangle;
mod dwarf;
mod root;
mod symtab;
mod units;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::Object;

use bytes::Bytes;
pub use demangle::{CppFallback, demangle, looks_mangled, set_cpp_fallback};
use dwarf::RawFrame;
pub use root::{OpenInRoot, Root};
use symtab::{SymbolTable, Which};
use units::Names;

/// One module (ELF file) to symbolize addresses in.
#[derive(Clone, Debug)]
pub struct ModuleDesc {
    /// The path as the target sees it (as in /proc/PID/maps), e.g. `/usr/lib/libc.so.6`.
    pub path: String,
    /// The file contents (opened through /proc/PID/root or map_files by the caller).
    pub data: Bytes,
    /// The GNU build-id, when the file has one.
    pub build_id: Option<Vec<u8>>,
    /// The target's root, searched first for debug files: opens the paths the target sees
    /// (a directory such as `/`, or the agent's handle on the target's root).
    pub root: Root,
}

/// One named frame; an address inside inlined code yields several, innermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SymFrame {
    /// Demangled function name.
    pub function: Option<String>,
    /// Source file path.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
    /// True for a frame that was inlined into the next one in the list.
    pub inlined: bool,
}

/// Where a module's names come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DebugInfo {
    /// DWARF in the module's own file.
    Embedded,
    /// DWARF in a separate file found by build-id (its path on the agent's side).
    BuildId(PathBuf),
    /// DWARF in a separate file found through `.gnu_debuglink` (its path).
    DebugLink(PathBuf),
    /// No DWARF: function names from the ELF symbol tables only.
    SymbolsOnly,
    /// Nothing names addresses in this module.
    Nothing,
}

impl DebugInfo {
    /// True when DWARF (file, line, inlined frames) is available.
    pub fn has_dwarf(&self) -> bool {
        matches!(
            self,
            DebugInfo::Embedded | DebugInfo::BuildId(_) | DebugInfo::DebugLink(_)
        )
    }
}

/// Counters describing the symbolizer's work so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymbolizerStats {
    /// Calls to [`Symbolizer::symbolize`].
    pub lookups: u64,
    /// Lookups answered from the address cache.
    pub cache_hits: u64,
    /// Modules opened (debug file search, symbol tables read).
    pub modules_loaded: u64,
    /// Modules dropped from the cache to bound memory.
    pub modules_evicted: u64,
    /// DWARF lookups that failed on malformed data (the answer fell back to what remained).
    pub dwarf_errors: u64,
}

/// Parsed modules kept at most (least recently used ones are dropped).
const DEFAULT_MAX_MODULES: usize = 128;
/// Resolved addresses kept per cache generation.
const ADDR_CACHE_GENERATION: usize = 1 << 15;

/// Names addresses; caches parsed files by identity.
pub struct Symbolizer {
    debug_dirs: Vec<PathBuf>,
    modules: HashMap<ModuleKey, Module>,
    max_modules: usize,
    next_id: u64,
    tick: u64,
    /// Two-generation address cache keyed by (module id, svma): lookups hit `young` then
    /// `old` (promoting); when `young` fills up it becomes `old`.
    young: HashMap<(u64, u64), Arc<[SymFrame]>>,
    old: HashMap<(u64, u64), Arc<[SymFrame]>>,
    stats: SymbolizerStats,
    /// Parse DWARF units on demand where they stand alone (the default).
    lazy_units: bool,
}

impl Symbolizer {
    /// A symbolizer that also searches `debug_dirs` (besides `/usr/lib/debug`) for debug
    /// files.
    pub fn new(debug_dirs: Vec<PathBuf>) -> Self {
        Symbolizer {
            debug_dirs,
            modules: HashMap::new(),
            max_modules: DEFAULT_MAX_MODULES,
            next_id: 0,
            tick: 0,
            young: HashMap::new(),
            old: HashMap::new(),
            stats: SymbolizerStats::default(),
            lazy_units: true,
        }
    }

    /// Whether DWARF units are parsed on demand, one at a time, where no unit refers into
    /// another (the default), or all at once when a module is first used (addr2line's
    /// whole-file index). Both name every address alike; the switch exists to compare
    /// them. Applies to modules loaded afterwards.
    pub fn set_lazy_units(&mut self, lazy: bool) {
        self.lazy_units = lazy;
    }

    /// Keep at most `max` parsed modules (at least 1); the least recently used are dropped.
    pub fn set_max_modules(&mut self, max: usize) {
        self.max_modules = max.max(1);
        while self.modules.len() > self.max_modules {
            self.evict_one();
        }
    }

    /// Name `svma` (a file address: the looked-up address minus the module's bias) in
    /// `module`, innermost frame first. Empty when nothing names it.
    pub fn symbolize(&mut self, module: &ModuleDesc, svma: u64) -> Vec<SymFrame> {
        self.stats.lookups += 1;
        let module_key = ModuleKey::of(module);
        let id = self.module(module_key.clone(), module).id;
        let key = (id, svma);
        if let Some(hit) = self.young.get(&key) {
            self.stats.cache_hits += 1;
            return hit.to_vec();
        }
        if let Some(hit) = self.old.remove(&key) {
            self.stats.cache_hits += 1;
            let out = hit.to_vec();
            self.remember(key, hit);
            return out;
        }
        let lazy = self.lazy_units;
        let (frames, errors) = self.module(module_key, module).resolve(svma, lazy);
        self.stats.dwarf_errors += errors;
        self.remember(key, frames.clone().into());
        frames
    }

    /// Where names for `module` come from (loads the module if needed, without touching
    /// its DWARF).
    pub fn debug_info(&mut self, module: &ModuleDesc) -> DebugInfo {
        self.module(ModuleKey::of(module), module).info.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> SymbolizerStats {
        self.stats
    }

    /// DWARF units of the loaded modules read on demand: how many are indexed and how
    /// many have been parsed so far (modules whose units refer into each other, parsed as
    /// a whole, are not counted).
    pub fn lazy_units(&self) -> (usize, usize) {
        self.modules
            .values()
            .filter_map(|m| match &m.dwarf {
                DwarfState::Ready(names) => names.unit_counts(),
                _ => None,
            })
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
    }

    fn remember(&mut self, key: (u64, u64), frames: Arc<[SymFrame]>) {
        if self.young.len() >= ADDR_CACHE_GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, frames);
    }

    /// The loaded module for `desc`, loading it (and evicting another) when needed.
    fn module(&mut self, key: ModuleKey, desc: &ModuleDesc) -> &mut Module {
        self.tick += 1;
        if !self.modules.contains_key(&key) {
            while self.modules.len() >= self.max_modules {
                self.evict_one();
            }
            let id = self.next_id;
            self.next_id += 1;
            let module = Module::load(desc, &self.debug_dirs, id);
            self.stats.modules_loaded += 1;
            self.modules.insert(key.clone(), module);
        }
        let tick = self.tick;
        let module = self.modules.get_mut(&key).expect("inserted above");
        module.last_used = tick;
        module
    }

    fn evict_one(&mut self) {
        let Some(key) = self
            .modules
            .iter()
            .min_by_key(|(_, m)| m.last_used)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        if let Some(module) = self.modules.remove(&key) {
            self.young.retain(|(id, _), _| *id != module.id);
            self.old.retain(|(id, _), _| *id != module.id);
            self.stats.modules_evicted += 1;
        }
    }
}

/// The identity of a module's file: its build-id and size when it has a build-id (a
/// stripped and an unstripped copy differ in size), else its path, size and a checksum of
/// its first and last pages.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ModuleKey {
    BuildId {
        id: Vec<u8>,
        len: usize,
    },
    Contents {
        path: String,
        len: usize,
        sample: u32,
    },
}

impl ModuleKey {
    fn of(desc: &ModuleDesc) -> ModuleKey {
        let data: &[u8] = &desc.data;
        match &desc.build_id {
            Some(id) if !id.is_empty() => ModuleKey::BuildId {
                id: id.clone(),
                len: data.len(),
            },
            _ => {
                const PAGE: usize = 4096;
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&data[..data.len().min(PAGE)]);
                hasher.update(&data[data.len().saturating_sub(PAGE)..]);
                ModuleKey::Contents {
                    path: desc.path.clone(),
                    len: data.len(),
                    sample: hasher.finalize(),
                }
            }
        }
    }
}

/// The DWARF of a module: not yet parsed, parsed, or absent/broken.
enum DwarfState {
    /// The file holding the DWARF (and the supplementary file, if any); parsed on first use.
    Pending {
        data: Bytes,
        sup: Option<Bytes>,
    },
    Ready(Names),
    Absent,
}

/// One loaded module: its DWARF and symbol tables.
struct Module {
    id: u64,
    last_used: u64,
    info: DebugInfo,
    dwarf: DwarfState,
    /// `.symtab` of the debug file, `.symtab` of the binary, `.dynsym` of the binary: the
    /// first that names an address wins.
    symtabs: Vec<SymbolTable>,
    /// Function ranges from the binary's `.eh_frame`, sorted: which function an address
    /// is in, to judge whether a symbol plausibly names it.
    functions: Vec<(u64, u64)>,
    /// The target's root, where split DWARF files are looked up.
    root: Root,
}

impl Module {
    /// Open `desc`: find its DWARF (own or a separate debug file) and read its symbol
    /// tables. Never fails: a corrupt file yields a module that names nothing.
    fn load(desc: &ModuleDesc, debug_dirs: &[PathBuf], id: u64) -> Module {
        let loaded = catch_unwind(AssertUnwindSafe(|| Self::load_inner(desc, debug_dirs, id)));
        loaded.unwrap_or(Module {
            id,
            last_used: 0,
            info: DebugInfo::Nothing,
            dwarf: DwarfState::Absent,
            symtabs: Vec::new(),
            functions: Vec::new(),
            root: desc.root.clone(),
        })
    }

    fn load_inner(desc: &ModuleDesc, debug_dirs: &[PathBuf], id: u64) -> Module {
        let own = object::File::parse(&*desc.data).ok();
        let build_id = desc.build_id.clone().or_else(|| {
            own.as_ref()
                .and_then(|f| f.build_id().ok().flatten().map(<[u8]>::to_vec))
        });
        let own_dwarf = own.as_ref().is_some_and(dwarf::has_debug_info);

        let mut separate: Option<(debugfile::Found, DebugInfo)> = None;
        if !own_dwarf {
            if let Some(bid) = build_id.as_deref() {
                separate = debugfile::find_by_build_id(bid, &desc.root, debug_dirs).map(|f| {
                    let info = DebugInfo::BuildId(f.path.clone());
                    (f, info)
                });
            }
            if separate.is_none()
                && let Some(own) = &own
                && let Ok(Some((name, crc))) = own.gnu_debuglink()
                && let Ok(name) = std::str::from_utf8(name)
            {
                separate = debugfile::find_by_debuglink(
                    name,
                    crc,
                    &desc.path,
                    build_id.as_deref(),
                    &desc.root,
                    debug_dirs,
                )
                .map(|f| {
                    let info = DebugInfo::DebugLink(f.path.clone());
                    (f, info)
                });
            }
        }

        let mut symtabs = Vec::new();
        let mut info = DebugInfo::Nothing;
        let mut dwarf = DwarfState::Absent;
        if let Some((found, found_info)) = separate
            && let Ok(file) = object::File::parse(&*found.data)
        {
            symtabs.push(SymbolTable::read(&file, Which::Static));
            if dwarf::has_debug_info(&file) {
                let sup = find_sup(&file, &found.place, &desc.root, debug_dirs);
                dwarf = DwarfState::Pending {
                    data: found.data.clone(),
                    sup,
                };
                info = found_info;
            }
        }
        let mut functions = Vec::new();
        if let Some(own) = &own {
            functions = symtab::function_ranges(own);
            symtabs.push(SymbolTable::read(own, Which::Static));
            symtabs.push(SymbolTable::read(own, Which::Dynamic));
            if own_dwarf {
                let own_path = debugfile::Place::Target(PathBuf::from(&desc.path));
                let sup = find_sup(own, &own_path, &desc.root, debug_dirs);
                dwarf = DwarfState::Pending {
                    data: desc.data.clone(),
                    sup,
                };
                info = DebugInfo::Embedded;
            }
        }
        symtabs.retain(|t| t.len() > 0);
        if info == DebugInfo::Nothing && !symtabs.is_empty() {
            info = DebugInfo::SymbolsOnly;
        }
        Module {
            id,
            last_used: 0,
            info,
            dwarf,
            symtabs,
            functions,
            root: desc.root.clone(),
        }
    }

    /// The DWARF lookups, set up on first use.
    fn names(&mut self, lazy: bool) -> Option<&Names> {
        if let DwarfState::Pending { data, sup } = &self.dwarf {
            let (data, sup) = (data.clone(), sup.clone());
            let built = catch_unwind(AssertUnwindSafe(|| build_names(&data, sup.as_ref(), lazy)));
            self.dwarf = match built {
                Ok(Some(names)) => DwarfState::Ready(names),
                _ => DwarfState::Absent,
            };
        }
        match &self.dwarf {
            DwarfState::Ready(names) => Some(names),
            _ => None,
        }
    }

    /// Frames for `svma` and the number of DWARF errors met.
    fn resolve(&mut self, svma: u64, lazy: bool) -> (Vec<SymFrame>, u64) {
        let mut errors = 0;
        let mut raw: Vec<RawFrame> = Vec::new();
        let mut panicked = false;
        let root = self.root.clone();
        let root = &root;
        // addr2line looks an address up as the range `[svma, svma + 1)`, which does not
        // exist for the last address (and overflows); no DWARF range can cover it anyway.
        let names = if svma == u64::MAX {
            None
        } else {
            self.names(lazy)
        };
        if let Some(names) = names {
            let looked_up = catch_unwind(AssertUnwindSafe(|| {
                let mut errors = 0;
                let mut raw = Vec::new();
                for ctx in names.contexts(svma) {
                    let (frames, error) = dwarf::find_frames(ctx, svma, root);
                    raw = frames;
                    if error.is_some() {
                        errors += 1;
                        // A broken unit: keep what the line table alone can say.
                        if raw.is_empty() {
                            raw.extend(dwarf::find_location(ctx, svma));
                        }
                    }
                    if !raw.is_empty() {
                        break;
                    }
                }
                (raw, errors)
            }));
            match looked_up {
                Ok((frames, e)) => {
                    raw = frames;
                    errors += e;
                }
                Err(_) => panicked = true,
            }
        }
        if panicked {
            // Do not trust DWARF that panicked half-way; keep the symbol tables.
            errors += 1;
            self.dwarf = DwarfState::Absent;
        }
        // Frames that carry nothing at all are dropped.
        raw.retain(|f| f.name.is_some() || f.file.is_some() || f.line.is_some());

        let count = raw.len();
        let mut frames: Vec<SymFrame> = raw
            .iter()
            .enumerate()
            .map(|(i, f)| SymFrame {
                function: f.name.as_deref().map(demangle),
                file: f.file.as_deref().map(normalize_path),
                line: f.line,
                inlined: i + 1 < count,
            })
            .collect();

        let function = symtab::function_at(&self.functions, svma);
        let symbol = self
            .symtabs
            .iter()
            .find_map(|t| t.lookup(svma, function))
            .map(|(name, _start)| demangle(name));
        match (frames.last_mut(), symbol) {
            (None, Some(name)) => frames.push(SymFrame {
                function: Some(name),
                file: None,
                line: None,
                inlined: false,
            }),
            (Some(outer), Some(name)) => {
                let language = raw.last().and_then(|f| f.language);
                match &outer.function {
                    None => outer.function = Some(name),
                    // A bare DWARF name (no linkage name, e.g. line-tables-only debug info)
                    // for a language with qualified names: the symbol table's name for the
                    // same function is more complete.
                    Some(short)
                        if !short.contains("::")
                            && name.contains("::")
                            && dwarf::is_qualified_language(language)
                            && demangle::base_name(short) == demangle::base_name(&name) =>
                    {
                        outer.function = Some(name)
                    }
                    Some(_) => {}
                }
            }
            (_, None) => {}
        }
        (frames, errors)
    }
}

/// Set up the DWARF lookups over `data` (plus a supplementary file). Only indexes are
/// read here; units are parsed on demand by lookups.
fn build_names(data: &Bytes, sup: Option<&Bytes>, lazy: bool) -> Option<Names> {
    let file = object::File::parse(&**data).ok()?;
    let sections = dwarf::load(data, &file);
    let sup = sup.and_then(|sup| {
        let sup_file = object::File::parse(&**sup).ok()?;
        Some(dwarf::load(sup, &sup_file))
    });
    Names::build(sections, sup, lazy)
}

/// The DWARF supplementary file (`.gnu_debugaltlink`, as made by dwz) of `file` located at
/// `file_path`: the named path (absolute in the target root, or relative to the file's
/// directory), else by the build-id it carries; its build-id must match.
fn find_sup(
    file: &object::File<'_>,
    file_path: &debugfile::Place,
    root: &Root,
    debug_dirs: &[PathBuf],
) -> Option<Bytes> {
    use debugfile::Place;
    let (name, want) = file.gnu_debugaltlink().ok().flatten()?;
    let name = Path::new(std::str::from_utf8(name).ok()?);
    let mut candidates = Vec::new();
    if name.is_absolute() {
        candidates.push(Place::Target(name.to_path_buf()));
        candidates.push(Place::Agent(name.to_path_buf()));
    } else {
        match file_path {
            Place::Target(p) => candidates.extend(p.parent().map(|d| Place::Target(d.join(name)))),
            Place::Agent(p) => candidates.extend(p.parent().map(|d| Place::Agent(d.join(name)))),
        }
    }
    for place in candidates {
        if let Some(data) = place.map(root)
            && debugfile::build_id_of(&data).as_deref() == Some(want)
        {
            return Some(data);
        }
    }
    debugfile::find_by_build_id(want, root, debug_dirs).map(|f| f.data)
}

/// A source path with `.` components and `dir/..` pairs removed lexically
/// (`/rustc/x/library/core/src/../../stdarch/a.rs` -> `/rustc/x/library/stdarch/a.rs`).
fn normalize_path(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if absolute => {}
                _ => parts.push(".."),
            },
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolizer_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Symbolizer>();
    }

    #[test]
    fn paths_normalized() {
        assert_eq!(
            normalize_path("/rustc/abc/library/core/src/../../stdarch/x86/sse2.rs"),
            "/rustc/abc/library/stdarch/x86/sse2.rs"
        );
        assert_eq!(normalize_path("./stdlib/msort.c"), "stdlib/msort.c");
        assert_eq!(normalize_path("/a/./b//c.c"), "/a/b/c.c");
        assert_eq!(normalize_path("../x/../y.c"), "../y.c");
        assert_eq!(normalize_path("/../y.c"), "/y.c");
        assert_eq!(
            normalize_path("/usr/include/c++/12/bits/stl_vector.h"),
            "/usr/include/c++/12/bits/stl_vector.h"
        );
    }
}
