//! Symbolizing this test binary itself (Rust, with DWARF from the test profile): a known
//! function resolves to its demangled path without hash, its file and line; no name that
//! comes out is still mangled.

mod common;

use bytes::Bytes;
use object::{Object, ObjectSymbol};
use profiler::symbolize::{ModuleDesc, Symbolizer, looks_mangled};

const KNOWN_FN_LINE: u32 = line!() + 2;
#[inline(never)]
fn known_function_for_symbolize(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_mul(31) ^ 7
}

mod nested {
    pub struct Widget(pub u64);
    impl Widget {
        #[inline(never)]
        pub fn spin(&self) -> u64 {
            std::hint::black_box(self.0).rotate_left(5)
        }
    }
}

fn self_module() -> ModuleDesc {
    let data = std::fs::read("/proc/self/exe").unwrap();
    let build_id = profiler::elf::facts(&data).and_then(|f| f.build_id);
    ModuleDesc {
        path: std::fs::read_link("/proc/self/exe")
            .unwrap()
            .to_string_lossy()
            .into_owned(),
        data: Bytes::from_owner(data),
        build_id,
        root: "/".into(),
    }
}

/// The file address (SVMA) of a runtime address inside this executable, through
/// /proc/self/maps and the program headers.
fn svma_of(addr: u64, module: &ModuleDesc) -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let mut cols = line.split_whitespace();
        let range = cols.next().unwrap();
        let _perms = cols.next();
        let offset = u64::from_str_radix(cols.next().unwrap(), 16).unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        if addr >= start && addr < end {
            let facts = profiler::elf::facts(&module.data).unwrap();
            return facts.offset_to_svma(addr - start + offset).unwrap();
        }
    }
    panic!("{addr:#x} not mapped");
}

#[test]
fn own_function_by_name_file_and_line() {
    assert_eq!(known_function_for_symbolize(1), 31 ^ 7);
    let module = self_module();
    let mut sym = Symbolizer::new(Vec::new());
    assert!(sym.debug_info(&module).has_dwarf());
    let svma = svma_of(known_function_for_symbolize as *const () as u64, &module);
    let frames = sym.symbolize(&module, svma);
    let outer = frames.last().expect("named");
    assert_eq!(
        outer.function.as_deref(),
        Some("symbolize_self::known_function_for_symbolize")
    );
    assert!(!outer.inlined);
    let file = outer.file.as_deref().unwrap();
    assert!(file.ends_with("tests/symbolize_self.rs"), "{file}");
    let line = outer.line.unwrap();
    assert!(
        (KNOWN_FN_LINE..KNOWN_FN_LINE + 3).contains(&line),
        "line {line}, fn at {KNOWN_FN_LINE}"
    );

    // A method in a nested module: the full path, no hash.
    let widget = nested::Widget(3);
    assert_eq!(widget.spin(), 3u64.rotate_left(5));
    let svma = svma_of(nested::Widget::spin as *const () as u64, &module);
    let frames = sym.symbolize(&module, svma);
    assert_eq!(
        frames.last().and_then(|f| f.function.as_deref()),
        Some("symbolize_self::nested::Widget::spin")
    );
}

#[test]
fn no_mangled_names_in_own_binary() {
    let module = self_module();
    let file = object::File::parse(&*module.data).unwrap();
    let mut addrs: Vec<u64> = file
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 4)
        .flat_map(|s| [s.address(), s.address() + s.size() / 2])
        .collect();
    addrs.sort_unstable();
    // A spread of a few thousand addresses over the whole binary (std, gimli, our code).
    let step = (addrs.len() / 3000).max(1);
    let mut sym = Symbolizer::new(Vec::new());
    let mut named = 0;
    let mut inlined = 0;
    for addr in addrs.iter().step_by(step) {
        let frames = sym.symbolize(&module, *addr);
        for frame in &frames {
            if let Some(name) = &frame.function {
                named += 1;
                assert!(!looks_mangled(name), "{addr:#x}: {name}");
            }
            inlined += usize::from(frame.inlined);
        }
    }
    assert!(named > 1000, "only {named} names");
    assert!(inlined > 0, "no inlined frames at all");
}

/// The libc this process runs with, as a module.
fn loaded_libc() -> Option<ModuleDesc> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let path = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))?
        .to_string();
    let data = std::fs::read(&path).ok()?;
    let build_id = profiler::elf::facts(&data).and_then(|f| f.build_id);
    Some(ModuleDesc {
        path,
        data: Bytes::from_owner(data),
        build_id,
        root: "/".into(),
    })
}

#[test]
fn system_libc_with_distribution_debug_file() {
    let Some(libc) = loaded_libc() else {
        common::skip("no libc mapped in this process (a static build?)");
        return;
    };
    let mut sym = Symbolizer::new(Vec::new());
    let info = sym.debug_info(&libc);
    let file = object::File::parse(&*libc.data).unwrap();
    let (qsort, size) = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok("qsort"))
        .map(|s| (s.address(), s.size()))
        .expect("libc exports qsort");
    let frames = sym.symbolize(&libc, qsort + size / 2);
    let outer = frames.last().expect("qsort named");
    if !info.has_dwarf() {
        // No libc debug package installed: the export table still names it.
        assert!(
            outer
                .function
                .as_deref()
                .is_some_and(|n| n.contains("qsort"))
        );
        common::skip(&format!(
            "no debug file for {} (Debian/Ubuntu: libc6-dbg): its DWARF names and lines not checked",
            libc.path
        ));
        return;
    }
    // The source name, not glibc's internal alias `__GI_qsort` (the DWARF linkage name).
    assert_eq!(outer.function.as_deref(), Some("qsort"), "{frames:?}");
    assert!(
        outer.file.as_deref().is_some_and(|f| f.ends_with(".c")),
        "{frames:?}"
    );
    assert!(outer.line.is_some());
}
