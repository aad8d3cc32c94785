//! GNU's C++ demangler, borrowed from the C++ runtime: `__cxa_demangle` of
//! `libstdc++.so.6`, loaded with `dlopen` when first needed. It is the same demangler as
//! `c++filt` (libiberty's `cp-demangle.c`), with its recursion limits, and is handed to the
//! symbolizer as the fallback for the names `cpp_demangle` gives up on (some template
//! expressions). Without libstdc++ on the agent's machine there is no fallback.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::OnceLock;

type CxaDemangle = unsafe extern "C" fn(
    mangled: *const c_char,
    buf: *mut c_char,
    len: *mut usize,
    status: *mut c_int,
) -> *mut c_char;

/// Longest name handed to the C demangler (libstdc++'s longest names are a few KiB).
const MAX_NAME: usize = 16 << 10;

static CXA_DEMANGLE: OnceLock<Option<CxaDemangle>> = OnceLock::new();

fn load() -> Option<CxaDemangle> {
    const LIB: &CStr = c"libstdc++.so.6";
    const SYM: &CStr = c"__cxa_demangle";
    // SAFETY: dlopen with a constant, NUL-terminated name; loading libstdc++ runs its
    // initialisers, which only set up the C++ runtime. The handle is never closed, so the
    // function pointer taken from it stays valid for the life of the process.
    let handle = unsafe { libc::dlopen(LIB.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return None;
    }
    // SAFETY: dlsym on a live handle with a constant, NUL-terminated name.
    let sym: *mut c_void = unsafe { libc::dlsym(handle, SYM.as_ptr()) };
    if sym.is_null() {
        return None;
    }
    // SAFETY: `__cxa_demangle` has exactly this C ABI signature (the Itanium C++ ABI,
    // `abi::__cxa_demangle`); a data pointer and a function pointer have the same size here.
    Some(unsafe { std::mem::transmute::<*mut c_void, CxaDemangle>(sym) })
}

/// Demangle an Itanium C++ name with GNU's demangler (`None` when it fails or is absent).
/// Clone suffixes print as `c++filt` prints them (`f() [clone .isra.0]`).
pub fn gnu_demangle(name: &str) -> Option<String> {
    if !name.starts_with("_Z") || name.len() > MAX_NAME {
        return None;
    }
    let f = (*CXA_DEMANGLE.get_or_init(load))?;
    let c_name = CString::new(name).ok()?;
    let mut status: c_int = -1;
    // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call; a
    // null buffer asks the function to allocate the result with malloc, which is freed
    // below; `status` is a valid out pointer.
    let out = unsafe {
        f(
            c_name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut status,
        )
    };
    if out.is_null() {
        return None;
    }
    // SAFETY: on success `out` is a NUL-terminated string allocated with malloc, owned by
    // us: copied, then freed exactly once.
    let text = unsafe { CStr::from_ptr(out) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: see above; `out` is not used afterwards.
    unsafe { libc::free(out.cast()) };
    (status == 0 && !text.is_empty()).then_some(text)
}

/// Give the symbolizer GNU's demangler as its C++ fallback (once per process).
pub fn install() {
    profiler_symbolize::set_cpp_fallback(gnu_demangle);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_what_cpp_demangle_cannot() {
        let name = "_ZSt4swapIdENSt9enable_ifIXsrSt6__and_IJSt6__not_ISt15__is_tuple_likeIT_EESt21is_move_constructibleIS4_ESt18is_move_assignableIS4_EEE5valueEvE4typeERS4_SE_";
        let Some(d) = gnu_demangle(name) else {
            eprintln!("SKIPPED: libstdc++.so.6 cannot be loaded");
            return;
        };
        assert!(d.ends_with("std::swap<double>(double&, double&)"), "{d}");
        assert_eq!(
            gnu_demangle("_ZN2ns3fooEi.isra.0").as_deref(),
            Some("ns::foo(int) [clone .isra.0]")
        );
        assert_eq!(gnu_demangle("main"), None);
        assert_eq!(gnu_demangle("_Z"), None);
        assert_eq!(gnu_demangle("_Zx\0y"), None);
    }
}
