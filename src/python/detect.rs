//! Is the target CPython, and which? The interpreter is the mapped file (executable or
//! `libpython3.X.so`) whose symbol tables define `_PyRuntime`; its version comes from
//! `_Py_DebugOffsets` (3.13+), `Py_Version` (3.11+) or the file name; its eval loop from
//! the symbols `_PyEval_EvalFrameDefault` (and `.cold` parts, where `.symtab` has them).

use object::{Object, ObjectSymbol, SymbolKind};

use super::layout::{self, DEBUG_OFFSETS_READ, Version};
use super::{PythonTarget, ReadMemory};
use crate::procmaps::Mapping;

/// The outcome of looking at a target.
#[derive(Debug)]
pub enum Detection {
    /// Not CPython (no mapped file defines `_PyRuntime`).
    NotPython,
    /// CPython the agent reads.
    Supported(Box<PythonTarget>),
    /// CPython the agent cannot read: the line to show (native stacks still work).
    Unsupported(String),
}

/// Could this mapped file be an interpreter? (`python3.11`, `python3`, `libpython3.11.so.1.0`,
/// `libpython3.13t.so`, `uwsgi`... any executable may embed it, so the main executable is
/// always looked at; libraries only when named libpython.)
fn candidate(path: &str, is_exe: bool) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    is_exe || name.starts_with("libpython")
}

/// Version and free-threading from a file name such as `libpython3.13t.so.1.0` or
/// `python3.9`.
pub fn version_from_name(path: &str) -> Option<(Version, bool)> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let rest = rest.strip_prefix("3.")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let minor: u8 = digits.parse().ok()?;
    let free = rest[digits.len()..].starts_with('t');
    Some((
        Version {
            major: 3,
            minor,
            micro: 0,
        },
        free,
    ))
}

/// Symbols of the interpreter file, as SVMAs.
#[derive(Debug, Default)]
struct Symbols {
    runtime: Option<u64>,
    py_version: Option<u64>,
    code_type: Option<u64>,
    eval: Vec<(u64, u64)>,
}

fn symbols(data: &[u8]) -> Option<Symbols> {
    let file = object::File::parse(data).ok()?;
    let mut s = Symbols::default();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        let Ok(name) = sym.name() else { continue };
        match name {
            "_PyRuntime" => s.runtime = Some(sym.address()),
            "Py_Version" => s.py_version = Some(sym.address()),
            "PyCode_Type" => s.code_type = Some(sym.address()),
            _ if (name == "_PyEval_EvalFrameDefault"
                || name.starts_with("_PyEval_EvalFrameDefault.cold"))
                && sym.kind() == SymbolKind::Text
                && sym.size() > 0 =>
            {
                let r = (sym.address(), sym.address() + sym.size());
                if !s.eval.contains(&r) {
                    s.eval.push(r);
                }
            }
            _ => {}
        }
    }
    Some(s)
}

/// Look at a target's maps. `exe`: the path of its executable; `file`: the bytes of a mapped
/// file; `mem`: its memory (for `Py_Version` and `_Py_DebugOffsets`).
pub fn detect<M: ReadMemory>(
    maps: &[Mapping],
    exe: Option<&str>,
    mut file: impl FnMut(&Mapping) -> Option<bytes::Bytes>,
    mem: &M,
) -> Detection {
    let mut seen: Vec<&str> = Vec::new();
    for m in maps.iter().filter(|m| m.is_file()) {
        if seen.contains(&m.path.as_str()) {
            continue;
        }
        seen.push(&m.path);
        let is_exe = exe == Some(m.path.as_str());
        if !candidate(&m.path, is_exe) {
            continue;
        }
        // The mapping at the lowest address of this file gives the bias.
        let Some(first) = maps
            .iter()
            .filter(|x| x.path == m.path && x.inode == m.inode)
            .min_by_key(|x| x.start)
        else {
            continue;
        };
        let Some(data) = file(first) else { continue };
        let Some(syms) = symbols(&data) else { continue };
        let Some(runtime_svma) = syms.runtime else {
            continue;
        };
        let Some(facts) = crate::elf::facts(&data) else {
            continue;
        };
        let Some(first_svma) = facts.offset_to_svma(first.offset) else {
            continue;
        };
        let bias = first.start.wrapping_sub(first_svma);
        let runtime = runtime_svma.wrapping_add(bias);
        let by_name = version_from_name(&m.path);
        let mut dbg = vec![0u8; DEBUG_OFFSETS_READ];
        let debug = mem
            .read_bytes(runtime, &mut dbg)
            .then(|| layout::parse_debug_offsets(&dbg))
            .flatten();
        let py_version = syms
            .py_version
            .and_then(|a| mem.read_u64(a.wrapping_add(bias)))
            .map(|v| Version::from_hex(v & 0xffff_ffff));
        let version = debug
            .as_ref()
            .map(|d| d.version)
            .or(py_version)
            .or(by_name.map(|(v, _)| v));
        let Some(version) = version else {
            return Detection::Unsupported(format!(
                "python: {} holds a CPython interpreter of unknown version: Python frames not \
                 read (native stacks only)",
                m.path
            ));
        };
        let free =
            debug.as_ref().is_some_and(|d| d.free_threaded) || by_name.is_some_and(|(_, f)| f);
        if free {
            return Detection::Unsupported(format!(
                "python: CPython {version} free-threaded build ({}): not supported, Python \
                 frames not read (native stacks only)",
                m.path
            ));
        }
        if version.major != 3 || version.minor < 9 {
            return Detection::Unsupported(format!(
                "python: CPython {version} ({}): versions before 3.9 are not supported, Python \
                 frames not read (native stacks only)",
                m.path
            ));
        }
        let layout = match debug
            .and_then(|d| d.layout)
            .or_else(|| layout::table(version))
        {
            Some(mut l) => {
                l.version = version;
                l
            }
            None => {
                return Detection::Unsupported(format!(
                    "python: CPython {version} ({}): this version's layout is not known to the \
                     agent (3.9 to 3.13 are): Python frames not read (native stacks only)",
                    m.path
                ));
            }
        };
        if syms.eval.is_empty() {
            return Detection::Unsupported(format!(
                "python: CPython {version} ({}): no symbol for _PyEval_EvalFrameDefault, Python \
                 frames cannot be placed (native stacks only)",
                m.path
            ));
        }
        let interpreter_ranges = maps
            .iter()
            .filter(|x| x.path == m.path && x.inode == m.inode && x.exec)
            .map(|x| (x.start, x.end))
            .collect();
        return Detection::Supported(Box::new(PythonTarget {
            version,
            layout,
            runtime,
            code_type: syms.code_type.map(|a| a.wrapping_add(bias)),
            interpreter_path: m.path.clone(),
            eval_ranges: syms
                .eval
                .iter()
                .map(|&(a, b)| (a.wrapping_add(bias), b.wrapping_add(bias)))
                .collect(),
            interpreter_ranges,
        }));
    }
    Detection::NotPython
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_file_names() {
        let v = |s| version_from_name(s).map(|(v, f)| (v.minor, f));
        assert_eq!(v("/usr/lib/libpython3.9.so.1.0"), Some((9, false)));
        assert_eq!(v("/opt/py/bin/python3.13t"), Some((13, true)));
        assert_eq!(v("/usr/bin/python3.11"), Some((11, false)));
        assert_eq!(v("/usr/bin/python3"), None);
        assert_eq!(v("/usr/lib/libfoo.so"), None);
    }
}
