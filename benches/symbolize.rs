//! Micro-benchmark of symbolization: time per address, warm (every address already
//! resolved once by this `Symbolizer`: the address cache answers), cold (a fresh
//! `Symbolizer` whose module is already open: the DWARF lookups run, addr2line parses the
//! units it needs) and cold including opening the module (debug file search, symbol
//! tables). Modules: the fixture `cpp_app` (C++, full DWARF with inlining), this benchmark
//! executable (Rust, line tables only, thousands of functions) and the C library (symbol
//! tables only, unless its debug file is installed). Needs `make fixtures`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use object::{Object, ObjectSymbol, SymbolKind};
use profiler::symbolize::{ModuleDesc, Symbolizer};

/// Addresses picked per module.
const ADDRESSES: usize = 256;

fn module(path: &Path) -> Option<(ModuleDesc, Vec<u64>)> {
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: the file is a read-only system or build file that nothing truncates while the
    // benchmark runs.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let data = Bytes::from_owner(map);
    let facts = profiler::elf::facts(&data)?;
    let obj = object::File::parse(&*data).ok()?;
    let mut funcs: Vec<(u64, u64)> = obj
        .symbols()
        .chain(obj.dynamic_symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.size() >= 8 && s.is_definition())
        .map(|s| (s.address(), s.size()))
        .collect();
    funcs.sort_unstable();
    funcs.dedup_by_key(|f| f.0);
    if funcs.is_empty() {
        return None;
    }
    // Spread the picks over the whole text, each in the middle of its function.
    let step = (funcs.len() / ADDRESSES).max(1);
    let addrs = funcs
        .iter()
        .step_by(step)
        .take(ADDRESSES)
        .map(|(a, s)| a + s / 2)
        .collect();
    let desc = ModuleDesc {
        path: path.display().to_string(),
        data,
        build_id: facts.build_id,
        root: "/".into(),
    };
    Some((desc, addrs))
}

fn libc_path() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
        .map(PathBuf::from)
}

fn resolve_all(sym: &mut Symbolizer, desc: &ModuleDesc, addrs: &[u64]) -> usize {
    addrs
        .iter()
        .map(|&a| black_box(sym.symbolize(desc, a)).len())
        .sum()
}

fn bench_symbolize(c: &mut Criterion) {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/bin/cpp_app");
    assert!(fixture.exists(), "run `make fixtures` first");
    let mut cases = vec![("cpp_app", fixture)];
    if let Ok(exe) = std::env::current_exe() {
        cases.push(("rust_bench_exe", exe));
    }
    if let Some(libc) = libc_path() {
        cases.push(("libc", libc));
    }
    let mut g = c.benchmark_group("symbolize");
    // Cold passes take up to a few hundred milliseconds: the same iteration count per sample.
    g.sampling_mode(SamplingMode::Flat);
    for (name, path) in cases {
        let Some((desc, addrs)) = module(&path) else {
            eprintln!("skipping {}: no function symbols", path.display());
            continue;
        };
        let named = resolve_all(&mut Symbolizer::new(Vec::new()), &desc, &addrs);
        assert!(named >= addrs.len(), "{name}: addresses left unnamed");
        g.throughput(Throughput::Elements(addrs.len() as u64));
        let mut warm = Symbolizer::new(Vec::new());
        resolve_all(&mut warm, &desc, &addrs);
        g.bench_function(format!("{name}/warm"), |b| {
            b.iter(|| resolve_all(&mut warm, &desc, &addrs))
        });
        g.bench_function(format!("{name}/cold_module_open"), |b| {
            b.iter_batched_ref(
                || {
                    let mut s = Symbolizer::new(Vec::new());
                    // Opens the module (debug file search, symbol tables), not its DWARF.
                    s.debug_info(&desc);
                    s
                },
                |s| resolve_all(s, &desc, &addrs),
                BatchSize::LargeInput,
            )
        });
        g.bench_function(format!("{name}/cold_with_module_load"), |b| {
            b.iter_batched_ref(
                || Symbolizer::new(Vec::new()),
                |s| resolve_all(s, &desc, &addrs),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10);
    targets = bench_symbolize
}
criterion_main!(benches);
