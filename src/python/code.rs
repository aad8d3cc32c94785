//! Code objects resolved into names, outside the stop: `co_qualname`/`co_name`,
//! `co_filename`, `co_firstlineno` and the line table, cached by address. A cached entry is
//! used only while the object at that address still looks the same (its type, name and
//! file pointers, first line and line-table pointer are re-read and compared): a code
//! object freed and replaced by another at the same address is resolved again.

use std::collections::HashMap;
use std::sync::Arc;

use super::layout::Layout;
use super::linetable;
use super::{PyCodeInfo, ReadMemory};

/// Longest string read (names, file names).
const MAX_STRING: usize = 4096;
/// Largest line table read.
const MAX_TABLE: usize = 1 << 20;
/// Most code objects cached; past this the cache starts afresh.
const MAX_CACHED: usize = 200_000;

struct Entry {
    guard: [u64; 5],
    id: u32,
    table: Arc<[u8]>,
    first_line: i32,
    first_traceable: Option<u32>,
    lines: HashMap<i32, Option<u32>>,
}

/// What a Python frame resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Code object `id` (see [`CodeCache::info`]) at a line (None: the table has none).
    Frame {
        /// Id of the code info.
        id: u32,
        /// Line of the instruction.
        line: Option<u32>,
    },
    /// A frame that has not started its first instruction (`_PyFrame_IsIncomplete`): the
    /// interpreter itself leaves it out of tracebacks.
    Incomplete,
    /// Not readable, or not a code object.
    Unreadable,
}

/// The cache of resolved code objects of one target.
#[derive(Default)]
pub struct CodeCache {
    entries: HashMap<u64, Entry>,
    infos: Vec<Arc<PyCodeInfo>>,
    by_info: HashMap<Arc<PyCodeInfo>, u32>,
    /// Cache hits.
    pub hits: u64,
    /// Code objects read (first sight, or reuse of an address detected).
    pub reads: u64,
    /// Cached entries found stale (the address now holds another object).
    pub stale: u64,
}

impl std::hash::Hash for PyCodeInfo {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.function.hash(h);
        self.filename.hash(h);
        self.first_line.hash(h);
    }
}

impl CodeCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Code info by id (ids are dense, from 0, never reused).
    pub fn info(&self, id: u32) -> Option<&Arc<PyCodeInfo>> {
        self.infos.get(id as usize)
    }

    /// Number of distinct code infos handed out.
    pub fn len(&self) -> usize {
        self.infos.len()
    }

    /// True when nothing was resolved yet.
    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    /// Resolve the code object at `addr` for an instruction at byte offset `instr`.
    /// `code_type`: the address of `PyCode_Type` when known, to check the object's type.
    pub fn resolve<M: ReadMemory + ?Sized>(
        &mut self,
        mem: &M,
        l: &Layout,
        code_type: Option<u64>,
        addr: u64,
        instr: i32,
    ) -> Resolved {
        let mut hdr = [0u8; 256];
        let size = (l.code_size as usize).min(hdr.len());
        if addr < 4096 || !mem.read_bytes(addr, &mut hdr[..size]) {
            return Resolved::Unreadable;
        }
        let u = |o: u64| u64::from_le_bytes(hdr[o as usize..o as usize + 8].try_into().unwrap());
        let i32_at =
            |o: u64| i32::from_le_bytes(hdr[o as usize..o as usize + 4].try_into().unwrap());
        let ob_type = u(8);
        if code_type.is_some_and(|t| t != ob_type) {
            return Resolved::Unreadable;
        }
        let name_ptr = u(l.code_qualname.unwrap_or(l.code_name));
        let file_ptr = u(l.code_filename);
        let table_ptr = u(l.code_linetable);
        let first_line = i32_at(l.code_firstlineno);
        let guard = [ob_type, name_ptr, file_ptr, table_ptr, first_line as u64];
        let hit = self.entries.get(&addr).is_some_and(|e| e.guard == guard);
        if !hit {
            if self.entries.contains_key(&addr) {
                self.stale += 1;
            }
            self.reads += 1;
            let Some(function) = read_str(mem, l, name_ptr) else {
                return Resolved::Unreadable;
            };
            let filename = read_str(mem, l, file_ptr).unwrap_or_default();
            let table = read_bytes_obj(mem, l, table_ptr).unwrap_or_default();
            let info = Arc::new(PyCodeInfo {
                function,
                filename,
                first_line: first_line.max(0) as u32,
            });
            let id = match self.by_info.get(&info) {
                Some(&id) => id,
                None => {
                    let id = self.infos.len() as u32;
                    self.infos.push(info.clone());
                    self.by_info.insert(info, id);
                    id
                }
            };
            if self.entries.len() >= MAX_CACHED {
                self.entries.clear();
            }
            let first_traceable = l
                .code_firsttraceable
                .map(|o| i32_at(o).clamp(0, 1 << 20) as u32);
            self.entries.insert(
                addr,
                Entry {
                    guard,
                    id,
                    table: table.into(),
                    first_line,
                    first_traceable,
                    lines: HashMap::new(),
                },
            );
        } else {
            self.hits += 1;
        }
        let e = self.entries.get_mut(&addr).expect("just inserted");
        if let Some(ft) = e.first_traceable
            && (instr < 0 || (instr as u32) < ft * 2)
        {
            return Resolved::Incomplete;
        }
        let line = match e.lines.get(&instr) {
            Some(&l) => l,
            None => {
                let line =
                    linetable::line_for(l.linetable, &e.table, e.first_line, instr.max(0) as u32);
                if e.lines.len() < 4096 {
                    e.lines.insert(instr, line);
                }
                line
            }
        };
        Resolved::Frame { id: e.id, line }
    }
}

/// A `str` object's text: compact ASCII and compact Latin-1/UCS-2/UCS-4 strings (what the
/// compiler makes of names and file names); None otherwise.
pub fn read_str<M: ReadMemory + ?Sized>(mem: &M, l: &Layout, addr: u64) -> Option<String> {
    if addr < 4096 {
        return None;
    }
    let mut hdr = [0u8; 40];
    if !mem.read_bytes(addr, &mut hdr) {
        return None;
    }
    let len = u64::from_le_bytes(hdr[16..24].try_into().ok()?) as usize;
    let st = l.unicode_state as usize;
    let state = u32::from_le_bytes(hdr[st..st + 4].try_into().ok()?);
    let kind = (state >> 2) & 7;
    let compact = (state >> 5) & 1 == 1;
    let ascii = (state >> 6) & 1 == 1;
    if !compact || len > MAX_STRING {
        return None;
    }
    if ascii {
        let mut b = vec![0u8; len];
        mem.read_bytes(addr + l.unicode_ascii_size, &mut b)
            .then_some(())?;
        return String::from_utf8(b).ok();
    }
    let width = match kind {
        1 | 2 | 4 => kind as usize,
        _ => return None,
    };
    let mut b = vec![0u8; len * width];
    mem.read_bytes(addr + l.unicode_compact_size, &mut b)
        .then_some(())?;
    Some(
        b.chunks_exact(width)
            .map(|c| {
                let v = match width {
                    1 => c[0] as u32,
                    2 => u16::from_le_bytes([c[0], c[1]]) as u32,
                    _ => u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                };
                char::from_u32(v).unwrap_or('\u{fffd}')
            })
            .collect(),
    )
}

/// A `bytes` object's contents (line tables), bounded.
pub fn read_bytes_obj<M: ReadMemory + ?Sized>(mem: &M, l: &Layout, addr: u64) -> Option<Vec<u8>> {
    if addr < 4096 {
        return None;
    }
    let len = mem.read_u64(addr + 16)? as usize;
    if len > MAX_TABLE {
        return None;
    }
    let mut b = vec![0u8; len];
    mem.read_bytes(addr + l.bytes_sval, &mut b).then_some(b)
}
