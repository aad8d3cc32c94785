//! Where CPython keeps what the agent reads: struct offsets per minor version.
//!
//! 3.9–3.12: a table written from CPython's own headers (the `Include/internal` headers each
//! install ships, measured with `offsetof` for x86_64 Linux builds and cross-checked with
//! py-spy's bindings). 3.13+: the interpreter describes itself in `_Py_DebugOffsets` at the
//! start of `_PyRuntime` (cookie `xdebugpy`), which is read instead; the table's 3.13 row is
//! only used for the one field the debug offsets lack (`_co_firsttraceable`).

use super::linetable::TableKind;

/// A CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// 3.
    pub major: u8,
    /// 9..13.
    pub minor: u8,
    /// Micro version, when known (0 when only the minor is known).
    pub micro: u8,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.micro == 0 {
            write!(f, "{}.{}", self.major, self.minor)
        } else {
            write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
        }
    }
}

impl Version {
    /// From `PY_VERSION_HEX` (`Py_Version`, `_Py_DebugOffsets.version`).
    pub fn from_hex(hex: u64) -> Version {
        Version {
            major: (hex >> 24) as u8,
            minor: (hex >> 16) as u8,
            micro: (hex >> 8) as u8,
        }
    }
}

/// How frames are chained in a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameModel {
    /// 3.9/3.10: `PyThreadState.frame` → `PyFrameObject` (`f_back`, `f_code`, `f_lasti`),
    /// one eval-loop call per frame. `lasti_units`: `f_lasti` counts code units (3.10)
    /// rather than bytes (3.9).
    FrameObject {
        /// `f_lasti` in code units (×2 for bytes).
        lasti_units: bool,
    },
    /// 3.11: `_PyInterpreterFrame` chain; `is_entry` marks the first frame an eval-loop call
    /// ran.
    Interp311,
    /// 3.12+: `_PyInterpreterFrame` chain with C-stack-owned entry frames between eval
    /// calls.
    Interp312,
}

/// Struct offsets of one CPython version (bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Version.
    pub version: Version,
    /// How frames chain.
    pub model: FrameModel,
    /// `_PyRuntimeState.interpreters.head`.
    pub runtime_interpreters_head: u64,
    /// `PyInterpreterState.next`.
    pub interp_next: u64,
    /// `PyInterpreterState.threads.head` (`tstate_head` before 3.11).
    pub interp_threads_head: u64,
    /// `PyThreadState.next`.
    pub tstate_next: u64,
    /// Where the current frame is: `PyThreadState.frame` (3.9/3.10), `.cframe` (3.11/3.12,
    /// a pointer to `_PyCFrame`), `.current_frame` (3.13+).
    pub tstate_frame: u64,
    /// `_PyCFrame.current_frame` (3.11/3.12), read through `tstate_frame`; None when
    /// `tstate_frame` is the frame itself.
    pub cframe_current_frame: Option<u64>,
    /// `PyThreadState.thread_id` (the pthread handle).
    pub tstate_thread_id: u64,
    /// `PyThreadState.native_thread_id` (3.11+).
    pub tstate_native_thread_id: Option<u64>,
    /// Frame: link to the caller (`f_back` / `previous`).
    pub frame_back: u64,
    /// Frame: the code object (`f_code` / `f_executable`).
    pub frame_code: u64,
    /// Frame: `f_lasti` (3.9/3.10, an int) or `prev_instr`/`instr_ptr` (3.11+, a pointer).
    pub frame_instr: u64,
    /// `_PyInterpreterFrame.owner` (3.11+).
    pub frame_owner: Option<u64>,
    /// `_PyInterpreterFrame.is_entry` (3.11).
    pub frame_is_entry: Option<u64>,
    /// Bytes to read for one frame (covers every field above).
    pub frame_size: u64,
    /// `PyCodeObject.co_filename`.
    pub code_filename: u64,
    /// `co_name`.
    pub code_name: u64,
    /// `co_qualname` (3.11+).
    pub code_qualname: Option<u64>,
    /// `co_firstlineno` (an int).
    pub code_firstlineno: u64,
    /// The line table (`co_lnotab` / `co_linetable`).
    pub code_linetable: u64,
    /// Its format.
    pub linetable: TableKind,
    /// `co_code_adaptive` (3.11+): the bytecode inside the code object.
    pub code_adaptive: Option<u64>,
    /// `_co_firsttraceable` (3.11+).
    pub code_firsttraceable: Option<u64>,
    /// Bytes to read for one code object header (covers every field above).
    pub code_size: u64,
    /// `PyASCIIObject.state`.
    pub unicode_state: u64,
    /// `sizeof(PyASCIIObject)`: where an ASCII compact string's characters start.
    pub unicode_ascii_size: u64,
    /// `sizeof(PyCompactUnicodeObject)`: where other compact strings' characters start.
    pub unicode_compact_size: u64,
    /// `PyBytesObject.ob_sval`.
    pub bytes_sval: u64,
}

/// `_PyInterpreterFrame.owner` of frames owned by a generator.
pub const OWNED_BY_GENERATOR: u8 = 1;
/// `_PyInterpreterFrame.owner` of the entry frames the eval loop keeps on the C stack
/// (3.12+).
pub const OWNED_BY_CSTACK: u8 = 3;

/// The table for 3.9–3.12 (and 3.13 as a fallback and for `_co_firsttraceable`).
pub fn table(version: Version) -> Option<Layout> {
    if version.major != 3 {
        return None;
    }
    let common = |model, rt, inext, ithreads| Layout {
        version,
        model,
        runtime_interpreters_head: rt,
        interp_next: inext,
        interp_threads_head: ithreads,
        tstate_next: 8,
        tstate_frame: 24,
        cframe_current_frame: None,
        tstate_thread_id: 176,
        tstate_native_thread_id: None,
        frame_back: 24,
        frame_code: 32,
        frame_instr: 104,
        frame_owner: None,
        frame_is_entry: None,
        frame_size: 112,
        code_filename: 104,
        code_name: 112,
        code_qualname: None,
        code_firstlineno: 40,
        code_linetable: 120,
        linetable: TableKind::Lnotab,
        code_adaptive: None,
        code_firsttraceable: None,
        code_size: 128,
        unicode_state: 32,
        unicode_ascii_size: 48,
        unicode_compact_size: 72,
        bytes_sval: 32,
    };
    Some(match version.minor {
        9 => common(FrameModel::FrameObject { lasti_units: false }, 32, 0, 8),
        10 => Layout {
            frame_instr: 96,
            linetable: TableKind::Pep626,
            ..common(FrameModel::FrameObject { lasti_units: true }, 32, 0, 8)
        },
        11 => Layout {
            tstate_frame: 56,
            cframe_current_frame: Some(8),
            tstate_thread_id: 152,
            tstate_native_thread_id: Some(160),
            frame_back: 48,
            frame_code: 32,
            frame_instr: 56,
            frame_owner: Some(69),
            frame_is_entry: Some(68),
            frame_size: 72,
            code_filename: 112,
            code_name: 120,
            code_qualname: Some(128),
            code_firstlineno: 72,
            code_linetable: 136,
            linetable: TableKind::Locations,
            code_adaptive: Some(184),
            code_firsttraceable: Some(168),
            code_size: 192,
            ..common(FrameModel::Interp311, 40, 0, 16)
        },
        12 => Layout {
            tstate_frame: 56,
            cframe_current_frame: Some(0),
            tstate_thread_id: 136,
            tstate_native_thread_id: Some(144),
            frame_back: 8,
            frame_code: 0,
            frame_instr: 56,
            frame_owner: Some(70),
            frame_size: 72,
            code_filename: 112,
            code_name: 120,
            code_qualname: Some(128),
            code_firstlineno: 68,
            code_linetable: 136,
            linetable: TableKind::Locations,
            code_adaptive: Some(192),
            code_firsttraceable: Some(176),
            code_size: 200,
            unicode_ascii_size: 40,
            unicode_compact_size: 56,
            ..common(FrameModel::Interp312, 40, 0, 72)
        },
        13 => Layout {
            tstate_frame: 72,
            cframe_current_frame: None,
            tstate_thread_id: 152,
            tstate_native_thread_id: Some(160),
            frame_back: 8,
            frame_code: 0,
            frame_instr: 56,
            frame_owner: Some(70),
            frame_size: 72,
            code_filename: 112,
            code_name: 120,
            code_qualname: Some(128),
            code_firstlineno: 68,
            code_linetable: 136,
            linetable: TableKind::Locations,
            code_adaptive: Some(200),
            code_firsttraceable: Some(184),
            code_size: 208,
            unicode_ascii_size: 40,
            unicode_compact_size: 56,
            ..common(FrameModel::Interp312, 632, 7264, 7344)
        },
        _ => return None,
    })
}

/// The cookie at the start of `_Py_DebugOffsets`.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// What `_Py_DebugOffsets` says: the version, whether the build is free-threaded, and (for
/// a layout of that struct the agent knows) the offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugOffsets {
    /// `version` (`PY_VERSION_HEX`).
    pub version: Version,
    /// `free_threaded`.
    pub free_threaded: bool,
    /// The offsets, for 3.13 (whose struct layout is known here).
    pub layout: Option<Layout>,
}

/// Bytes of `_Py_DebugOffsets` the agent reads (the 3.13 struct is 8 + 8 + 8 + 77×8 bytes).
pub const DEBUG_OFFSETS_READ: usize = 24 + 80 * 8;

/// Parse `_Py_DebugOffsets` from the first bytes of `_PyRuntime`. None without the cookie.
pub fn parse_debug_offsets(b: &[u8]) -> Option<DebugOffsets> {
    if b.get(..8)? != DEBUG_COOKIE {
        return None;
    }
    let u = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let version = Version::from_hex(u(1)?);
    let free_threaded = u(2)? != 0;
    if version.major != 3 || version.minor != 13 {
        return Some(DebugOffsets {
            version,
            free_threaded,
            layout: None,
        });
    }
    // 3.13's field order (Include/internal/pycore_runtime.h), in u64 slots after cookie,
    // version and free_threaded (slots 0..=2):
    let rt = 3; // runtime_state: size, finalizing, interpreters_head
    let is = rt + 3; // interpreter_state: size, id, next, threads_head, ... (13 fields)
    let ts = is + 13; // thread_state: size, prev, next, interp, current_frame, thread_id, native_thread_id, datastack_chunk, status
    let fr = ts + 9; // interpreter_frame: size, previous, executable, instr_ptr, localsplus, owner
    let co = fr + 6; // code_object: size, filename, name, qualname, linetable, firstlineno, argcount, localsplusnames, localspluskinds, co_code_adaptive
    let po = co + 10; // pyobject: size, ob_type
    let ty = po + 2; // type_object: size, tp_name, tp_repr, tp_flags
    let tu = ty + 4; // tuple_object: size, ob_item, ob_size
    let li = tu + 3; // list_object: size, ob_item, ob_size
    let di = li + 3; // dict_object: size, ma_keys, ma_values
    let fl = di + 3; // float_object: size, ob_fval
    let lo = fl + 2; // long_object: size, lv_tag, ob_digit
    let by = lo + 3; // bytes_object: size, ob_size, ob_sval
    let un = by + 3; // unicode_object: size, state, length, asciiobject_size
    let base = table(version)?;
    let max = |xs: &[u64]| xs.iter().copied().max().unwrap_or(0);
    let frame_fields = [u(fr + 1)?, u(fr + 2)?, u(fr + 3)?, u(fr + 5)?];
    let code_fields = [
        u(co + 1)?,
        u(co + 2)?,
        u(co + 3)?,
        u(co + 4)?,
        u(co + 5)?,
        base.code_firsttraceable.unwrap_or(0),
    ];
    let layout = Layout {
        version,
        runtime_interpreters_head: u(rt + 2)?,
        interp_next: u(is + 2)?,
        interp_threads_head: u(is + 3)?,
        tstate_next: u(ts + 2)?,
        tstate_frame: u(ts + 4)?,
        cframe_current_frame: None,
        tstate_thread_id: u(ts + 5)?,
        tstate_native_thread_id: Some(u(ts + 6)?),
        frame_back: u(fr + 1)?,
        frame_code: u(fr + 2)?,
        frame_instr: u(fr + 3)?,
        frame_owner: Some(u(fr + 5)?),
        frame_is_entry: None,
        frame_size: max(&frame_fields) + 8,
        code_filename: u(co + 1)?,
        code_name: u(co + 2)?,
        code_qualname: Some(u(co + 3)?),
        code_linetable: u(co + 4)?,
        code_firstlineno: u(co + 5)?,
        code_adaptive: Some(u(co + 9)?),
        code_size: max(&code_fields) + 8,
        unicode_state: u(un + 1)?,
        unicode_ascii_size: u(un + 3)?,
        bytes_sval: u(by + 2)?,
        ..base
    };
    Some(DebugOffsets {
        version,
        free_threaded,
        layout: Some(layout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_offsets_of_3_13_agree_with_the_table() {
        // The first 704 bytes of a 3.13.0 _PyRuntime (x86_64), as the interpreter sets them.
        let hex = include_str!("testdata/debug-offsets-3.13.hex");
        let bytes: Vec<u8> = (0..hex.trim().len() / 2)
            .map(|i| u8::from_str_radix(&hex.trim()[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let d = parse_debug_offsets(&bytes).expect("cookie");
        assert_eq!(d.version.minor, 13);
        assert!(!d.free_threaded);
        let l = d.layout.unwrap();
        let t = table(d.version).unwrap();
        assert_eq!(l.runtime_interpreters_head, t.runtime_interpreters_head);
        assert_eq!(l.interp_threads_head, t.interp_threads_head);
        assert_eq!(l.tstate_frame, t.tstate_frame);
        assert_eq!(l.tstate_native_thread_id, t.tstate_native_thread_id);
        assert_eq!(l.frame_back, t.frame_back);
        assert_eq!(l.frame_instr, t.frame_instr);
        assert_eq!(l.frame_owner, t.frame_owner);
        assert_eq!(l.code_qualname, t.code_qualname);
        assert_eq!(l.code_firstlineno, t.code_firstlineno);
        assert_eq!(l.code_adaptive, t.code_adaptive);
        assert_eq!(l.unicode_ascii_size, t.unicode_ascii_size);
        assert!(parse_debug_offsets(&bytes[1..]).is_none());
        // The same struct from a free-threaded build (`free_threaded` = 1): said so.
        let mut ft = bytes.clone();
        ft[16] = 1;
        assert!(parse_debug_offsets(&ft).unwrap().free_threaded);
        // A later version: its layout is not guessed.
        let mut later = bytes.clone();
        later[8..16].copy_from_slice(&0x030e_00f0u64.to_le_bytes());
        let d = parse_debug_offsets(&later).unwrap();
        assert_eq!((d.version.minor, d.layout), (14, None));
    }
}
