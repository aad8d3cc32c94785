//! Merging a thread's native stack with its Python frames.
//!
//! Each native eval-loop frame (`_PyEval_EvalFrameDefault`) ran the Python frames of one
//! group: from the leaf, the frames up to and including the next entry frame
//! ([`super::PyRawFrame::entry`]). The `k`-th eval frame from the leaf is replaced by the
//! `k`-th group; native frames between eval frames (C extensions, ctypes, libffi, libc's
//! `qsort`) keep their place, so a Python → C → Python callback shows all three layers.
//! The interpreter's other frames (its own C functions) are left out unless asked for.
//!
//! When the counts differ (a thread caught while entering or leaving the eval loop, a
//! Python stack cut short) the merge cannot be trusted: the result is the native frames
//! leafward of the first eval frame, the Python frames, then the native frames rootward of
//! the last eval frame, and the caller counts it.

/// What a merged frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merged<N, P> {
    /// A native frame.
    Native(N),
    /// A Python frame.
    Python(P),
}

/// One Python frame for the merge: `frame` is None for a group boundary with no frame to
/// show (an entry marker, a frame not yet started, an unreadable code object).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyItem<P> {
    /// The frame to show.
    pub frame: Option<P>,
    /// Ends its group (the eval loop was entered here).
    pub entry: bool,
}

/// Merge leaf-first `native` frames with leaf-first `python` items into `out`. `is_eval`
/// and `is_internal` classify native frames. Returns false when the counts did not match
/// (the fallback order was used).
pub fn merge<N: Copy, P: Copy>(
    native: &[N],
    python: &[PyItem<P>],
    is_eval: impl Fn(&N) -> bool,
    is_internal: impl Fn(&N) -> bool,
    show_internals: bool,
    out: &mut Vec<Merged<N, P>>,
) -> bool {
    out.clear();
    // Group boundaries: the index after each entry item.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for (i, p) in python.iter().enumerate() {
        if p.entry {
            groups.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < python.len() {
        match groups.last_mut() {
            Some(g) => g.1 = python.len(),
            None => groups.push((start, python.len())),
        }
    }
    let evals = native.iter().filter(|n| is_eval(n)).count();
    let keep = |n: &N| show_internals || !is_internal(n) || is_eval(n);
    let push_group = |out: &mut Vec<Merged<N, P>>, (a, b): (usize, usize)| {
        out.extend(
            python[a..b]
                .iter()
                .filter_map(|p| p.frame.map(Merged::Python)),
        );
    };
    if evals == groups.len() {
        let mut g = 0;
        for n in native {
            if is_eval(n) {
                if show_internals {
                    // With the internals shown, the eval frame stays too, rootward of the
                    // Python frames it runs.
                    push_group(out, groups[g]);
                    out.push(Merged::Native(*n));
                } else {
                    push_group(out, groups[g]);
                }
                g += 1;
            } else if keep(n) {
                out.push(Merged::Native(*n));
            }
        }
        return true;
    }
    let first = native.iter().position(&is_eval).unwrap_or(native.len());
    let last = native
        .iter()
        .rposition(&is_eval)
        .map_or(native.len(), |i| i + 1);
    out.extend(
        native[..first]
            .iter()
            .filter(|n| keep(n))
            .map(|n| Merged::Native(*n)),
    );
    out.extend(python.iter().filter_map(|p| p.frame.map(Merged::Python)));
    if last <= native.len() {
        out.extend(
            native[last.max(first)..]
                .iter()
                .filter(|n| keep(n) && !is_eval(n))
                .map(|n| Merged::Native(*n)),
        );
    }
    false
}

/// Leave out the interpreter's own frames of a stack without Python frames (a thread the
/// interpreter does not know, or a target where the frames could not be read), eval frames
/// kept.
pub fn hide_internals<N: Copy>(
    native: &[N],
    is_eval: impl Fn(&N) -> bool,
    is_internal: impl Fn(&N) -> bool,
) -> Vec<N> {
    native
        .iter()
        .filter(|n| is_eval(n) || !is_internal(n))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Native frames as strings: "E" eval, "i:..." interpreter internals, others native.
    fn run(
        native: &[&'static str],
        py: &[(&'static str, bool)],
        show: bool,
    ) -> (Vec<String>, bool) {
        let items: Vec<PyItem<&str>> = py
            .iter()
            .map(|&(f, entry)| PyItem {
                frame: (!f.is_empty()).then_some(f),
                entry,
            })
            .collect();
        let mut out = Vec::new();
        let ok = merge(
            native,
            &items,
            |n| *n == "E",
            |n| n.starts_with("i:") || *n == "E",
            show,
            &mut out,
        );
        let names = out
            .iter()
            .map(|m| match m {
                Merged::Native(n) => n.to_string(),
                Merged::Python(p) => format!("py:{p}"),
            })
            .collect();
        (names, ok)
    }

    #[test]
    fn python_c_python_callback_keeps_all_three_layers() {
        // Leaf first: the comparison callback runs in its own eval call under ffi/qsort,
        // itself called from a Python function of the outer eval call (3.11: two groups).
        let native = [
            "i:PyLong_Add",
            "E",
            "i:_PyObject_Call",
            "ffi_closure",
            "qsort",
            "ffi_call",
            "_ctypes_callproc",
            "i:PyObject_Vectorcall",
            "E",
            "i:Py_RunMain",
            "main",
            "_start",
        ];
        let py = [
            ("cmp", true),
            ("sort_with_c", false),
            ("main_loop", false),
            ("<module>", true),
        ];
        let (out, ok) = run(&native, &py, false);
        assert!(ok);
        assert_eq!(
            out,
            [
                "py:cmp",
                "ffi_closure",
                "qsort",
                "ffi_call",
                "_ctypes_callproc",
                "py:sort_with_c",
                "py:main_loop",
                "py:<module>",
                "main",
                "_start"
            ]
        );
        let (out, _) = run(&native, &py, true);
        assert_eq!(out[0], "i:PyLong_Add");
        assert_eq!(out[1], "py:cmp");
        assert_eq!(out[2], "E");
    }

    #[test]
    fn per_frame_eval_calls_and_empty_groups() {
        // 3.10: one eval call per frame.
        let native = ["E", "E", "E", "main"];
        let py = [("c", true), ("b", true), ("a", true)];
        assert_eq!(run(&native, &py, false).0, ["py:c", "py:b", "py:a", "main"]);
        // 3.12: an eval call that has not pushed its frame yet is an empty group.
        let native = ["E", "ffi", "E", "main"];
        let py = [("", true), ("f", false), ("g", true)];
        assert_eq!(run(&native, &py, false).0, ["ffi", "py:f", "py:g", "main"]);
    }

    #[test]
    fn a_count_mismatch_falls_back_to_the_python_stack() {
        let native = ["leafc", "E", "i:x", "cext", "E", "E", "main"];
        let py = [("f", true), ("g", true)];
        let (out, ok) = run(&native, &py, false);
        assert!(!ok);
        assert_eq!(out, ["leafc", "py:f", "py:g", "main"]);
    }
}
