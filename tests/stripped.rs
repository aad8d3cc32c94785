//! The stripped fixture copies get the same names, files and lines as the original, from
//! their separate debug files (one found by build-id, one by `.gnu_debuglink`).

mod common;

use std::path::{Path, PathBuf};

use object::{Object, ObjectSymbol, SymbolKind};
use profiler::symbolize::{ModuleDesc, SymFrame, Symbolizer};

fn desc(path: &Path) -> ModuleDesc {
    common::module_desc(path)
}

/// Addresses inside every function of `reference` (an ELF with a symbol table).
fn addresses(reference: &Path) -> Vec<(String, u64)> {
    let data = std::fs::read(reference).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let mut out = Vec::new();
    for sym in file.symbols() {
        if sym.kind() != SymbolKind::Text || sym.size() == 0 {
            continue;
        }
        let name = sym.name().unwrap_or("").to_string();
        for off in (0..sym.size()).step_by(3) {
            out.push((name.clone(), sym.address() + off));
        }
    }
    assert!(
        out.len() > 100,
        "too few addresses in {}",
        reference.display()
    );
    out
}

fn compare(stripped: &Path, reference: &Path, debug_dirs: Vec<PathBuf>) {
    let mut with_debug = Symbolizer::new(debug_dirs);
    let mut plain = Symbolizer::new(vec![]);
    let s = desc(stripped);
    let r = desc(reference);
    let mut named = 0;
    let mut with_lines = 0;
    for (func, addr) in addresses(reference) {
        let a: Vec<SymFrame> = with_debug.symbolize(&s, addr);
        let b: Vec<SymFrame> = plain.symbolize(&r, addr);
        assert_eq!(a, b, "{func}+{addr:#x} in {}", stripped.display());
        if a.iter().any(|f| f.function.is_some()) {
            named += 1;
        }
        if a.iter().any(|f| f.line.is_some()) {
            with_lines += 1;
        }
    }
    assert!(
        named > 100 && with_lines > 100,
        "{named} named, {with_lines} with lines"
    );
    // Without the debug files, the stripped copy cannot name its static functions.
    let mut blind = Symbolizer::new(vec![]);
    let (_, addr) = addresses(reference)
        .into_iter()
        .find(|(f, _)| f == "worker_direct")
        .unwrap();
    let copy = tempfile::tempdir().unwrap();
    let lone = copy.path().join("lone");
    std::fs::copy(stripped, &lone).unwrap();
    let frames = blind.symbolize(&desc(&lone), addr);
    assert!(
        frames
            .iter()
            .all(|f| f.function.as_deref() != Some("worker_direct")),
        "named without debug files: {frames:?}"
    );
}

#[test]
fn build_id_copy_matches_the_original() {
    compare(
        &common::fixture_path("c_workers_stripped_buildid"),
        &common::fixture_path("c_workers"),
        vec![common::fixture_path("debug")],
    );
}

#[test]
fn debuglink_copy_matches_its_debug_file() {
    compare(
        &common::fixture_path("c_workers_stripped_debuglink"),
        &common::fixture_path("c_workers_stripped_debuglink.debug"),
        vec![],
    );
}
