//! The target's modules (executables, shared libraries, the vDSO) from its maps: which file
//! covers an address, at what bias, with its unwind tables and what the symbolizer needs.
//!
//! Addresses: an AVMA is an address in the target process; an SVMA is the address the ELF
//! file states; `avma = svma + bias`. Every module gets an id that is never reused in a
//! session, so a library loaded at the address of one unloaded earlier is a new module.

use std::collections::HashMap;
use std::sync::Arc;

use crate::elf::{self, ElfFacts};
use crate::procmaps::Mapping;
use bytes::Bytes;
use profiler_symbolize::{ModuleDesc, Root};
use profiler_unwind::{ModuleRef, UnwindInfo, UnwindModules};

/// One mapped ELF image.
#[derive(Debug)]
pub struct Module {
    /// Session-unique id (index into the module list).
    pub id: u32,
    /// Path as the target sees it (`[vdso]` for the vDSO).
    pub path: String,
    /// Lowest address of the image's mappings.
    pub image_addr: u64,
    /// Highest end of the image's mappings minus `image_addr`.
    pub image_size: u64,
    /// `avma - svma`.
    pub bias: u64,
    /// ELF facts, when the file could be read.
    pub facts: Option<ElfFacts>,
    /// Unwind tables, when the file could be read.
    pub unwind: Option<UnwindInfo>,
    /// What the symbolizer needs, when the file could be read.
    pub desc: Option<ModuleDesc>,
    /// Why the file could not be read, if it could not.
    pub load_error: Option<String>,
}

impl Module {
    /// The file name, for `module+0xOFFSET` names.
    pub fn short_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
    /// True for the vDSO.
    pub fn is_vdso(&self) -> bool {
        self.path == "[vdso]"
    }
}

/// How module files are obtained: from a live process (`os::files`) or from test data.
pub trait ModuleSource {
    /// The bytes of the file behind a file mapping.
    fn file(&self, mapping: &Mapping) -> Option<Bytes>;
    /// The bytes of a pseudo mapping such as `[vdso]`, read from memory.
    fn memory(&self, mapping: &Mapping) -> Option<Bytes>;
    /// The target's root, for debug file search.
    fn root(&self) -> Root;
    /// Code bytes at `avma` read from the target's memory (JIT code in no module): true
    /// when `buf` was filled. None by default.
    fn read_code(&self, _avma: u64, _buf: &mut [u8]) -> bool {
        false
    }
}

/// The module map with the target's memory behind it: what the unwinder needs to step
/// through JIT code in no module.
pub struct WithCode<'a, S: ModuleSource>(pub &'a ModuleMap, pub &'a S);

impl<S: ModuleSource> UnwindModules for WithCode<'_, S> {
    fn find(&self, avma: u64) -> Option<ModuleRef<'_>> {
        self.0.find(avma)
    }
    fn read_code(&self, avma: u64, buf: &mut [u8]) -> bool {
        self.0.find_module(avma).is_none() && self.1.read_code(avma, buf)
    }
}

/// Identity of a module across maps re-reads: same file at the same place.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    path: String,
    inode: u64,
    dev: (u32, u32),
    start: u64,
}

/// Every module seen in the session, and the ones mapped now.
#[derive(Default)]
pub struct ModuleMap {
    all: Vec<Arc<Module>>,
    by_key: HashMap<Key, Arc<Module>>,
    /// Executable ranges mapped now: (start, end, module), sorted by start.
    exec: Vec<(u64, u64, Arc<Module>)>,
    generation: u64,
}

impl ModuleMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every module ever seen, indexed by id.
    pub fn module(&self, id: u32) -> Option<&Arc<Module>> {
        self.all.get(id as usize)
    }

    /// All modules seen so far.
    pub fn all(&self) -> &[Arc<Module>] {
        &self.all
    }

    /// How many times the mapped set changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The module mapped executable at `avma` now.
    pub fn find_module(&self, avma: u64) -> Option<&Arc<Module>> {
        let i = self.exec.partition_point(|(_, end, _)| *end <= avma);
        self.exec
            .get(i)
            .filter(|(s, _, _)| *s <= avma)
            .map(|(_, _, m)| m)
    }

    /// Bring the map up to date with the target's mappings. Modules still mapped at the
    /// same place keep their id and their parsed tables.
    pub fn update(&mut self, maps: &[Mapping], source: &impl ModuleSource) {
        let mut exec = Vec::new();
        let mut by_key = HashMap::new();
        let mut changed = false;
        for group in group_images(maps) {
            let first = group[0];
            let key = Key {
                path: first.path.clone(),
                inode: first.inode,
                dev: (first.dev_major, first.dev_minor),
                start: group.iter().map(|m| m.start).min().unwrap_or(first.start),
            };
            let module = match self.by_key.get(&key) {
                Some(m) => m.clone(),
                None => {
                    changed = true;
                    let m = Arc::new(self.load(&group, source));
                    self.all.push(m.clone());
                    m
                }
            };
            for m in group.iter().filter(|m| m.exec) {
                exec.push((m.start, m.end, module.clone()));
            }
            by_key.insert(key, module);
        }
        exec.sort_by_key(|(s, _, _)| *s);
        if by_key.len() != self.by_key.len() {
            changed = true;
        }
        self.exec = exec;
        self.by_key = by_key;
        if changed {
            self.generation += 1;
        }
    }

    fn load(&self, group: &[&Mapping], source: &impl ModuleSource) -> Module {
        let first = group[0];
        let image_addr = group.iter().map(|m| m.start).min().unwrap_or(first.start);
        let image_end = group.iter().map(|m| m.end).max().unwrap_or(first.end);
        let id = self.all.len() as u32;
        let data = if first.is_file() {
            source.file(first)
        } else {
            source.memory(first)
        };
        let mut module = Module {
            id,
            path: first.path.clone(),
            image_addr,
            image_size: image_end - image_addr,
            bias: image_addr.wrapping_sub(first.offset),
            facts: None,
            unwind: None,
            desc: None,
            load_error: None,
        };
        let Some(data) = data else {
            module.load_error = Some("cannot read the file".into());
            return module;
        };
        let Some(facts) = elf::facts(&data) else {
            module.load_error = Some("not a 64-bit ELF file".into());
            return module;
        };
        // Bias from the executable mapping when there is one, else the first.
        let anchor = group.iter().find(|m| m.exec).copied().unwrap_or(first);
        if let Some(svma) = mapping_svma(&facts, anchor) {
            module.bias = anchor.start.wrapping_sub(svma);
        }
        match UnwindInfo::from_elf(data.clone()) {
            Ok(u) => module.unwind = Some(u),
            Err(e) => module.load_error = Some(format!("unwind tables: {e}")),
        }
        module.desc = Some(ModuleDesc {
            path: first.path.clone(),
            data,
            build_id: facts.build_id.clone(),
            root: source.root(),
        });
        module.facts = Some(facts);
        module
    }
}

/// The SVMA at the start of `mapping`. The kernel maps whole pages, so a segment whose
/// `p_offset` is not page-aligned (as lld lays out) starts mid-page: its mapping begins at
/// the page holding `p_offset`, which may also hold the end of the previous segment. The
/// segment with the mapping's permission (executable or not) decides.
fn mapping_svma(facts: &ElfFacts, mapping: &Mapping) -> Option<u64> {
    const PAGE: u64 = 4096;
    facts
        .loads
        .iter()
        .filter(|l| l.exec == mapping.exec)
        .find(|l| {
            mapping.offset >= l.offset & !(PAGE - 1)
                && mapping.offset < l.offset.saturating_add(l.filesz.max(1))
        })
        .map(|l| l.vaddr.wrapping_add(mapping.offset.wrapping_sub(l.offset)))
        .or_else(|| facts.offset_to_svma(mapping.offset))
}

/// Group consecutive mappings of the same file (or the vDSO) into images. The image
/// starts at a mapping of file offset 0 or at the first mapping of the file.
fn group_images(maps: &[Mapping]) -> Vec<Vec<&Mapping>> {
    let mut groups: Vec<Vec<&Mapping>> = Vec::new();
    for m in maps {
        let elf_like = m.is_file() || m.path == "[vdso]";
        if !elf_like {
            continue;
        }
        let same = groups.last().is_some_and(|g| {
            let last = g[g.len() - 1];
            last.path == m.path
                && last.inode == m.inode
                && (last.dev_major, last.dev_minor) == (m.dev_major, m.dev_minor)
                && m.offset != 0
        });
        if same {
            groups.last_mut().unwrap().push(m);
        } else {
            groups.push(vec![m]);
        }
    }
    // Only images that have code are modules.
    groups.retain(|g| g.iter().any(|m| m.exec));
    groups
}

impl UnwindModules for ModuleMap {
    fn find(&self, avma: u64) -> Option<ModuleRef<'_>> {
        let m = self.find_module(avma)?;
        Some(ModuleRef {
            info: m.unwind.as_ref()?,
            bias: m.bias,
            id: m.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procmaps::parse;

    struct NoFiles;
    impl ModuleSource for NoFiles {
        fn file(&self, _: &Mapping) -> Option<Bytes> {
            None
        }
        fn memory(&self, _: &Mapping) -> Option<Bytes> {
            None
        }
        fn root(&self) -> Root {
            Root::dir("/")
        }
    }

    const MAPS: &str = "\
555555554000-555555555000 r--p 00000000 fd:01 100 /usr/bin/demo
555555555000-555555556000 r-xp 00001000 fd:01 100 /usr/bin/demo
555555556000-555555557000 r--p 00002000 fd:01 100 /usr/bin/demo
7ffff7dd0000-7ffff7df0000 r--p 00000000 fd:01 200 /usr/lib/libc.so.6
7ffff7df0000-7ffff7f00000 r-xp 00020000 fd:01 200 /usr/lib/libc.so.6
7ffff7f00000-7ffff7f10000 rw-p 00000000 00:00 0
7ffff7fc1000-7ffff7fc3000 r-xp 00000000 00:00 0 [vdso]
";

    #[test]
    fn groups_and_finds_modules() {
        let mut mm = ModuleMap::new();
        mm.update(&parse(MAPS), &NoFiles);
        assert_eq!(mm.all().len(), 3);
        let demo = mm.find_module(0x555555555100).unwrap();
        assert_eq!(demo.path, "/usr/bin/demo");
        assert_eq!(demo.image_addr, 0x555555554000);
        assert_eq!(demo.image_size, 0x3000);
        assert!(mm.find_module(0x555555554100).is_none(), "not executable");
        assert_eq!(
            mm.find_module(0x7ffff7df0000).unwrap().short_name(),
            "libc.so.6"
        );
        assert!(mm.find_module(0x7ffff7fc1000).unwrap().is_vdso());
        assert!(mm.find_module(0x7ffff7f00000).is_none());
    }

    #[test]
    fn bias_of_segments_not_aligned_to_pages() {
        // lld's layout: the executable segment starts mid-page in the file, one page
        // further in memory; its mapping begins at the file page holding p_offset, which
        // the read-only segment before it also covers.
        use crate::elf::LoadSegment;
        let seg = |offset, vaddr, filesz, exec| LoadSegment {
            offset,
            vaddr,
            filesz,
            memsz: filesz,
            exec,
        };
        let facts = ElfFacts {
            build_id: None,
            loads: vec![
                seg(0, 0, 0x8ebd0, false),
                seg(0x8ebd0, 0x8fbd0, 0xe1990, true),
            ],
            little_endian: true,
        };
        let text = &parse("55ec31499000-55ec3157b000 r-xp 0008e000 fd:01 7 /t\n")[0];
        assert_eq!(mapping_svma(&facts, text), Some(0x8f000));
        let ro = &parse("55ec3140a000-55ec31499000 r--p 00000000 fd:01 7 /t\n")[0];
        assert_eq!(mapping_svma(&facts, ro), Some(0));
    }

    #[test]
    fn a_new_library_at_an_old_address_is_a_new_module() {
        let mut mm = ModuleMap::new();
        let a = "7f0000000000-7f0000001000 r-xp 00000000 fd:01 300 /opt/liba.so\n";
        let b = "7f0000000000-7f0000001000 r-xp 00000000 fd:01 301 /opt/libb.so\n";
        mm.update(&parse(a), &NoFiles);
        let id_a = mm.find_module(0x7f0000000100).unwrap().id;
        let g = mm.generation();
        mm.update(&parse(a), &NoFiles);
        assert_eq!(mm.find_module(0x7f0000000100).unwrap().id, id_a);
        assert_eq!(mm.generation(), g, "unchanged maps keep the generation");
        mm.update(&parse(b), &NoFiles);
        let m = mm.find_module(0x7f0000000100).unwrap();
        assert_ne!(m.id, id_a);
        assert_eq!(m.path, "/opt/libb.so");
        assert_eq!(mm.module(id_a).unwrap().path, "/opt/liba.so");
    }
}
