//! The store: frames and stacks interned once (stacks as a prefix tree of (parent, frame)
//! nodes, root first), the names of every interned frame, the session's modules,
//! per-thread facts and the functions seen at the top of stacks. Sinks read it; only the
//! naming stage writes it. A frame may be interned before it is named
//! ([`Naming::Later`]); [`Store::name_later_frames`] names those before anyone reads them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

// Keys made of our own small ids, hashed once per sample, use Fx (several times cheaper than
// SipHash); keys the target chooses (addresses, thread names) keep SipHash, so a hostile
// target cannot make lookups collide.
use rustc_hash::FxHashMap;

use super::{FrameKey, NamedFrame};
use crate::modules::Module;
use crate::types::{StackEnd, Tid};

/// Index of an interned stack (its leaf node).
pub type StackId = u32;

/// The names of a frame seen for the first time, or that it is named later (by
/// [`Store::name_later_frames`], before any of its names is read).
pub enum Naming {
    /// The names, innermost first (never empty).
    Now(Vec<NamedFrame>),
    /// Not named yet.
    Later,
}

impl From<Vec<NamedFrame>> for Naming {
    fn from(names: Vec<NamedFrame>) -> Self {
        Naming::Now(names)
    }
}

/// Module id of the marker frames that end an incomplete stack.
const MARKER: u32 = u32::MAX - 1;
const ROOT: u32 = u32::MAX;

fn marker_key(end: StackEnd) -> Option<FrameKey> {
    let addr = match end {
        StackEnd::Root => return None,
        StackEnd::Truncated => 0,
        StackEnd::Unknown => 1,
        StackEnd::MaxDepth => 2,
    };
    Some(FrameKey {
        module: MARKER,
        addr,
        is_return: false,
    })
}

/// Most exited threads listed one by one; past this the ones with the fewest samples are
/// folded into one total, so a target that creates threads all day does not grow the table.
const MAX_EXITED_LISTED: usize = 1000;

/// Per-thread facts.
#[derive(Clone, Debug, Default)]
pub struct ThreadStats {
    /// Latest name.
    pub name: String,
    /// Samples taken.
    pub samples: u64,
    /// Samples taken while the thread was running or ready to run.
    pub on_cpu: u64,
    /// Samples whose stack reached the thread's root.
    pub complete: u64,
    /// The name id samples are counted under, once known (reset when the name changes).
    name_id: Option<u32>,
}

/// Interned frames (with their names) and stacks, threads and modules of a session.
#[derive(Default)]
pub struct Store {
    frames: Vec<FrameKey>,
    names: Vec<Arc<[NamedFrame]>>,
    frame_index: FxHashMap<FrameKey, u32>,
    nodes: Vec<(u32, u32)>,
    node_index: FxHashMap<(u32, u32), u32>,
    thread_names: Vec<String>,
    thread_name_index: HashMap<String, u32>,
    threads: BTreeMap<Tid, ThreadStats>,
    /// Threads that exited, still listed (at most about `MAX_EXITED_LISTED`).
    exited: Vec<(Tid, ThreadStats)>,
    /// Totals of the exited threads no longer listed one by one.
    retired: ThreadStats,
    retired_threads: u64,
    modules: Vec<Arc<Module>>,
    /// Frames interned with [`Naming::Later`], not named yet.
    unnamed: Vec<u32>,
    /// Samples by leaf frame since the interning was last reset: all, and on-CPU only.
    leaves: FxHashMap<u32, (u64, u64)>,
    /// Samples by the innermost function of their leaf frame, from before the last reset.
    top: HashMap<Arc<str>, u64>,
    /// The same, of on-CPU samples only.
    top_on_cpu: HashMap<Arc<str>, u64>,
    /// How stacks ended, over all samples.
    pub ends: FxHashMap<StackEnd, u64>,
    /// Per thread, the last deep stack interned (frames root first, and the node of each):
    /// the next stack of that thread goes on from where the two part.
    paths: FxHashMap<Tid, Path>,
}

/// Frames (root first, the end marker included) of an interned stack, and the node each
/// one leads to.
#[derive(Default)]
struct Path {
    keys: Vec<FrameKey>,
    nodes: Vec<u32>,
}

/// Stacks at least this deep are remembered per thread ([`Store::intern_thread`]).
const DEEP_STACK: usize = 64;

/// Threads whose last deep stack is kept (beyond, the memory is dropped and rebuilt).
const MAX_PATHS: usize = 256;

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget interned frames and stacks (and their names), keeping the per-thread totals
    /// and the top functions. Stack ids handed out before are invalid afterwards. Frames
    /// still to be named must be named first ([`Store::name_later_frames`]): the top
    /// functions are counted under their names here.
    pub fn reset_interning(&mut self) {
        debug_assert!(self.unnamed.is_empty(), "frames left unnamed at a reset");
        let (mut top, mut top_on_cpu) = (
            std::mem::take(&mut self.top),
            std::mem::take(&mut self.top_on_cpu),
        );
        self.count_leaves(&mut top, true);
        self.count_leaves(&mut top_on_cpu, false);
        (self.top, self.top_on_cpu) = (top, top_on_cpu);
        self.leaves.clear();
        self.unnamed.clear();
        self.frames.clear();
        self.names.clear();
        self.frame_index.clear();
        self.nodes.clear();
        self.node_index.clear();
        self.paths.clear();
    }

    /// A module first seen (they arrive in id order).
    pub fn add_module(&mut self, m: Arc<Module>) {
        let i = m.id as usize;
        if i == self.modules.len() {
            self.modules.push(m);
        } else if i < self.modules.len() {
            self.modules[i] = m;
        }
    }

    /// A module by id.
    pub fn module(&self, id: u32) -> Option<&Arc<Module>> {
        self.modules.get(id as usize)
    }

    /// Every module seen, by id.
    pub fn modules(&self) -> &[Arc<Module>] {
        &self.modules
    }

    /// Unique frames interned now.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Intern a stack given leaf first, naming each frame not seen before with `name`; an
    /// incomplete stack gets its marker frame at the root. None for an empty stack.
    pub fn intern<N: Into<Naming>>(
        &mut self,
        leaf_first: &[FrameKey],
        end: StackEnd,
        name: impl FnMut(&FrameKey, &[Arc<Module>]) -> N,
    ) -> Option<StackId> {
        self.intern_path(None, leaf_first, end, name)
    }

    /// [`Store::intern`] a stack of thread `tid`. A deep stack is compared, from the root,
    /// with the thread's last one, and only the frames past the first difference are
    /// looked up: a 2,000-frame recursion costs what its changing leaf does.
    pub fn intern_thread<N: Into<Naming>>(
        &mut self,
        tid: Tid,
        leaf_first: &[FrameKey],
        end: StackEnd,
        name: impl FnMut(&FrameKey, &[Arc<Module>]) -> N,
    ) -> Option<StackId> {
        self.intern_path(Some(tid), leaf_first, end, name)
    }

    fn intern_path<N: Into<Naming>>(
        &mut self,
        tid: Option<Tid>,
        leaf_first: &[FrameKey],
        end: StackEnd,
        mut name: impl FnMut(&FrameKey, &[Arc<Module>]) -> N,
    ) -> Option<StackId> {
        let marker = marker_key(end);
        let tid = tid.filter(|_| leaf_first.len() >= DEEP_STACK);
        let mut path = tid.and_then(|t| self.paths.remove(&t)).unwrap_or_default();
        let keys = marker.iter().chain(leaf_first.iter().rev());
        let same = path
            .keys
            .iter()
            .zip(keys.clone())
            .take_while(|(a, b)| a == b)
            .count();
        path.keys.truncate(same);
        path.nodes.truncate(same);
        let mut node = path.nodes.last().copied().unwrap_or(ROOT);
        for key in keys.skip(same) {
            let f = match self.frame_index.get(key) {
                Some(&i) => i,
                None => {
                    let i = self.frames.len() as u32;
                    let named: Arc<[NamedFrame]> = if key.module == MARKER {
                        Arc::new([NamedFrame::marker(end)])
                    } else {
                        match name(key, &self.modules).into() {
                            Naming::Now(names) => names.into(),
                            Naming::Later => {
                                self.unnamed.push(i);
                                Arc::new([NamedFrame::not_named_yet(key.addr)])
                            }
                        }
                    };
                    self.frames.push(*key);
                    self.names.push(named);
                    self.frame_index.insert(*key, i);
                    i
                }
            };
            node = match self.node_index.get(&(node, f)) {
                Some(&n) => n,
                None => {
                    let n = self.nodes.len() as u32;
                    self.nodes.push((node, f));
                    self.node_index.insert((node, f), n);
                    n
                }
            };
            if tid.is_some() {
                path.keys.push(*key);
                path.nodes.push(node);
            }
        }
        if let Some(t) = tid {
            if self.paths.len() >= MAX_PATHS {
                self.paths.clear();
            }
            self.paths.insert(t, path);
        }
        (node != ROOT).then_some(node)
    }

    /// Frame indexes of a stack, leaf first.
    pub fn stack_frames(&self, stack: StackId, out: &mut Vec<u32>) {
        out.clear();
        let mut node = stack;
        while node != ROOT {
            let (parent, frame) = self.nodes[node as usize];
            out.push(frame);
            node = parent;
        }
    }

    /// The key of interned frame `index`.
    pub fn frame_key(&self, index: u32) -> FrameKey {
        self.frames[index as usize]
    }

    /// The names of interned frame `index`, innermost first (never empty).
    pub fn names(&self, index: u32) -> &Arc<[NamedFrame]> {
        &self.names[index as usize]
    }

    /// How many frames were interned with [`Naming::Later`] and are not named yet.
    pub fn unnamed_frames(&self) -> usize {
        self.unnamed.len()
    }

    /// Name the frames interned with [`Naming::Later`], in the order they were first seen.
    pub fn name_later_frames(
        &mut self,
        mut name: impl FnMut(&FrameKey, &[Arc<Module>]) -> Vec<NamedFrame>,
    ) {
        for i in std::mem::take(&mut self.unnamed) {
            let names = name(&self.frames[i as usize], &self.modules);
            self.names[i as usize] = names.into();
        }
    }

    /// Count one sample of `tid` (`on_cpu`: running or ready to run); returns the id of the
    /// thread name it counts under.
    pub fn add_sample(
        &mut self,
        tid: Tid,
        stack: Option<StackId>,
        end: StackEnd,
        on_cpu: bool,
    ) -> u32 {
        let t = self.threads.entry(tid).or_default();
        let name_id = match t.name_id {
            Some(i) => i,
            None => {
                let name = if t.name.is_empty() {
                    format!("tid-{tid}")
                } else {
                    t.name.clone()
                };
                let i = match self.thread_name_index.get(&name) {
                    Some(&i) => i,
                    None => {
                        let i = self.thread_names.len() as u32;
                        self.thread_names.push(name.clone());
                        self.thread_name_index.insert(name, i);
                        i
                    }
                };
                t.name_id = Some(i);
                i
            }
        };
        let Some(stack) = stack else {
            return name_id;
        };
        t.samples += 1;
        if on_cpu {
            t.on_cpu += 1;
        }
        if end.is_complete() {
            t.complete += 1;
        }
        *self.ends.entry(end).or_default() += 1;
        let (_, leaf) = self.nodes[stack as usize];
        let counts = self.leaves.entry(leaf).or_default();
        counts.0 += 1;
        if on_cpu {
            counts.1 += 1;
        }
        name_id
    }

    /// Set a thread's name.
    pub fn set_thread_name(&mut self, tid: Tid, name: &str) {
        let t = self.threads.entry(tid).or_default();
        if t.name != name {
            t.name = name.to_string();
            t.name_id = None;
        }
    }

    /// Per-thread facts of the threads not retired.
    pub fn threads(&self) -> &BTreeMap<Tid, ThreadStats> {
        &self.threads
    }

    /// A thread's current name ("" when unknown).
    pub fn thread_name_of(&self, tid: Tid) -> &str {
        self.threads.get(&tid).map_or("", |t| t.name.as_str())
    }

    /// A thread that exited: it stays listed among the exited threads; past
    /// `MAX_EXITED_LISTED` of them, those with the fewest samples are folded into one
    /// total, so a target that creates threads all day does not grow the table.
    pub fn retire_thread(&mut self, tid: Tid) {
        let Some(t) = self.threads.remove(&tid) else {
            return;
        };
        self.exited.push((tid, t));
        if self.exited.len() >= 2 * MAX_EXITED_LISTED {
            self.exited
                .sort_by(|a, b| b.1.samples.cmp(&a.1.samples).then(a.0.cmp(&b.0)));
            for (_, t) in self.exited.drain(MAX_EXITED_LISTED..) {
                self.retired.samples += t.samples;
                self.retired.on_cpu += t.on_cpu;
                self.retired.complete += t.complete;
                self.retired_threads += 1;
            }
        }
    }

    /// Threads that exited and are still listed one by one, with their facts.
    pub fn exited_threads(&self) -> &[(Tid, ThreadStats)] {
        &self.exited
    }

    /// Exited threads no longer listed one by one, and their samples.
    pub fn retired(&self) -> (u64, u64) {
        (self.retired_threads, self.retired.samples)
    }

    /// Every thread's facts: live ones, then exited ones still listed (with `true`).
    pub fn all_threads(&self) -> impl Iterator<Item = (Tid, &ThreadStats, bool)> {
        self.threads
            .iter()
            .map(|(&tid, t)| (tid, t, false))
            .chain(self.exited.iter().map(|(tid, t)| (*tid, t, true)))
    }

    /// The thread name behind a name id.
    pub fn thread_name(&self, id: u32) -> &str {
        self.thread_names
            .get(id as usize)
            .map_or("?", String::as_str)
    }

    /// All samples with a stack.
    pub fn total_samples(&self) -> u64 {
        self.retired.samples + self.all_threads().map(|(_, t, _)| t.samples).sum::<u64>()
    }

    /// Samples with a stack taken while their thread was running or ready to run.
    pub fn on_cpu_samples(&self) -> u64 {
        self.retired.on_cpu + self.all_threads().map(|(_, t, _)| t.on_cpu).sum::<u64>()
    }

    /// Samples whose stack reached the root.
    pub fn complete_samples(&self) -> u64 {
        self.retired.complete + self.all_threads().map(|(_, t, _)| t.complete).sum::<u64>()
    }

    /// The `n` functions most often innermost (self samples), most first, with their
    /// counts; the shares are of [`Store::total_samples`] (or, with `on_cpu_only`, of
    /// [`Store::on_cpu_samples`]).
    pub fn top_functions(&self, n: usize) -> Vec<(String, u64)> {
        self.top_of(true, n)
    }

    /// [`Store::top_functions`] of on-CPU samples only, or of all with `idle`.
    pub fn top_functions_counted(&self, n: usize, idle: bool) -> Vec<(String, u64)> {
        self.top_of(idle, n)
    }

    /// Add the samples counted by leaf frame since the last reset to `top`, under the
    /// innermost name of each leaf: every sample with `all`, else the on-CPU ones.
    fn count_leaves(&self, top: &mut HashMap<Arc<str>, u64>, all: bool) {
        for (&leaf, &(every, on_cpu)) in &self.leaves {
            let count = if all { every } else { on_cpu };
            if count > 0 {
                let label = &self.names[leaf as usize][0].label;
                *top.entry(label.clone()).or_default() += count;
            }
        }
    }

    fn top_of(&self, all: bool, n: usize) -> Vec<(String, u64)> {
        let mut top = if all {
            self.top.clone()
        } else {
            self.top_on_cpu.clone()
        };
        self.count_leaves(&mut top, all);
        let mut v: Vec<(String, u64)> = top.iter().map(|(k, &v)| (k.to_string(), v)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(addr: u64) -> FrameKey {
        FrameKey {
            module: 0,
            addr,
            is_return: true,
        }
    }

    fn label(key: &FrameKey, _: &[Arc<Module>]) -> Vec<NamedFrame> {
        let mut n = NamedFrame::marker(StackEnd::Unknown);
        n.kind = crate::pipeline::FrameKind::Native;
        n.addr = key.addr;
        n.label = format!("f{}", key.addr).into();
        vec![n]
    }

    #[test]
    fn deep_stacks_interned_per_thread_get_the_ids_of_a_full_lookup() {
        // Two threads in deep recursions whose leaves, depths and ends change from one
        // sample to the next, interleaved.
        let stack = |tid: u64, i: u64| -> (Vec<FrameKey>, StackEnd) {
            let depth = 70 + (i * 7 + tid) % 40;
            let mut s: Vec<FrameKey> = (0..depth)
                .map(|d| f(100 + tid * 1000 + d.min(50)))
                .collect();
            s.reverse();
            s.insert(0, f(9000 + i % 5));
            let end = if i % 9 == 4 {
                StackEnd::Truncated
            } else {
                StackEnd::Root
            };
            (s, end)
        };
        let (mut full, mut per_thread) = (Store::new(), Store::new());
        let (mut named_full, mut named_thread) = (0, 0);
        for i in 0..200u64 {
            for tid in [1u64, 2] {
                let (s, end) = stack(tid, i);
                let a = full.intern(&s, end, |k, m| {
                    named_full += 1;
                    label(k, m)
                });
                let b = per_thread.intern_thread(tid as Tid, &s, end, |k, m| {
                    named_thread += 1;
                    label(k, m)
                });
                assert_eq!(a, b, "sample {i} of thread {tid}");
                let mut back = Vec::new();
                per_thread.stack_frames(b.unwrap(), &mut back);
                let marker = usize::from(end != StackEnd::Root);
                assert_eq!(back.len(), s.len() + marker);
            }
        }
        assert_eq!(named_full, named_thread);
        assert!(!per_thread.paths.is_empty());
        per_thread.reset_interning();
        assert!(
            per_thread.paths.is_empty(),
            "node ids of a reset store are gone"
        );
    }

    #[test]
    fn stacks_share_prefixes_and_round_trip() {
        let mut p = Store::new();
        let a = p
            .intern(&[f(3), f(2), f(1)], StackEnd::Root, label)
            .unwrap();
        let b = p
            .intern(&[f(4), f(2), f(1)], StackEnd::Root, label)
            .unwrap();
        let a2 = p
            .intern(&[f(3), f(2), f(1)], StackEnd::Root, label)
            .unwrap();
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_eq!(p.frame_count(), 4);
        let mut out = Vec::new();
        p.stack_frames(b, &mut out);
        let addrs: Vec<u64> = out.iter().map(|&i| p.frame_key(i).addr).collect();
        assert_eq!(addrs, vec![4, 2, 1]);
        assert_eq!(&*p.names(out[0])[0].label, "f4");
    }

    #[test]
    fn each_frame_named_once() {
        let mut p = Store::new();
        let mut calls = 0;
        for _ in 0..3 {
            p.intern(&[f(3), f(2)], StackEnd::Root, |k, m| {
                calls += 1;
                label(k, m)
            });
        }
        assert_eq!(calls, 2);
    }

    #[test]
    fn incomplete_stacks_carry_a_marker_and_top_counts_leaves() {
        let mut p = Store::new();
        let s = p.intern(&[f(9)], StackEnd::Truncated, label).unwrap();
        let mut out = Vec::new();
        p.stack_frames(s, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(&*p.names(out[1])[0].label, "[truncated]");
        p.set_thread_name(5, "worker");
        let id = p.add_sample(5, Some(s), StackEnd::Truncated, true);
        p.add_sample(5, Some(s), StackEnd::Truncated, false);
        assert_eq!(p.thread_name(id), "worker");
        assert_eq!(p.total_samples(), 2);
        assert_eq!(p.complete_samples(), 0);
        assert_eq!(p.top_functions(5), vec![("f9".to_string(), 2)]);
        assert_eq!(p.on_cpu_samples(), 1);
        assert_eq!(
            p.top_functions_counted(5, false),
            vec![("f9".to_string(), 1)]
        );
        // A thread that exited stays listed, and keeps its samples in the totals.
        p.retire_thread(5);
        assert!(p.threads().is_empty());
        let listed: Vec<(Tid, u64, bool)> =
            p.all_threads().map(|(t, s, e)| (t, s.samples, e)).collect();
        assert_eq!(listed, vec![(5, 2, true)]);
        assert_eq!(p.total_samples(), 2);
        assert_eq!(p.on_cpu_samples(), 1);
        assert_eq!(p.retired(), (0, 0));
        assert!(p.intern(&[], StackEnd::Root, label).is_none());
        // After a reset the totals and the top functions stay.
        p.reset_interning();
        assert_eq!(p.frame_count(), 0);
        let t = p.intern(&[f(7)], StackEnd::Root, label).unwrap();
        p.add_sample(6, Some(t), StackEnd::Root, true);
        assert_eq!(p.total_samples(), 3);
        let top = p.top_functions(5);
        assert_eq!(top.iter().map(|(_, n)| n).sum::<u64>(), p.total_samples());
    }

    #[test]
    fn frames_named_later_are_named_once_and_counted_under_their_names() {
        let mut p = Store::new();
        let later = |_: &FrameKey, _: &[Arc<Module>]| Naming::Later;
        let a = p
            .intern_thread(1, &[f(1), f(2)], StackEnd::Root, later)
            .unwrap();
        let b = p
            .intern_thread(2, &[f(3), f(2)], StackEnd::Truncated, later)
            .unwrap();
        p.add_sample(1, Some(a), StackEnd::Root, true);
        p.add_sample(1, Some(a), StackEnd::Root, false);
        p.add_sample(2, Some(b), StackEnd::Truncated, true);
        // Three frames wait for their names (the marker is named at once).
        assert_eq!(p.unnamed_frames(), 3);
        let mut idx = Vec::new();
        p.stack_frames(b, &mut idx);
        assert_eq!(&*p.names(idx[2])[0].label, "[truncated]");
        let mut seen = Vec::new();
        p.name_later_frames(|k, m| {
            seen.push(k.addr);
            label(k, m)
        });
        assert_eq!(
            seen,
            vec![2, 1, 3],
            "each frame once, in the order first seen"
        );
        assert_eq!(p.unnamed_frames(), 0);
        p.stack_frames(a, &mut idx);
        let labels: Vec<_> = idx
            .iter()
            .map(|&i| p.names(i)[0].label.to_string())
            .collect();
        assert_eq!(labels, ["f1", "f2"]);
        assert_eq!(
            p.top_functions(5),
            vec![("f1".to_string(), 2), ("f3".to_string(), 1)]
        );
        assert_eq!(
            p.top_functions_counted(5, false),
            vec![("f1".to_string(), 1), ("f3".to_string(), 1)]
        );
        // A reset keeps the counts under the names; later samples add to them.
        p.reset_interning();
        let c = p.intern(&[f(1)], StackEnd::Root, label).unwrap();
        p.add_sample(1, Some(c), StackEnd::Root, true);
        assert_eq!(
            p.top_functions_counted(5, false),
            vec![("f1".to_string(), 2), ("f3".to_string(), 1)]
        );
        assert_eq!(
            p.top_functions(5),
            vec![("f1".to_string(), 3), ("f3".to_string(), 1)]
        );
    }

    #[test]
    fn exited_threads_stay_listed_within_a_bound() {
        let mut p = Store::new();
        let s = p.intern(&[f(1)], StackEnd::Root, label).unwrap();
        let n = 2 * MAX_EXITED_LISTED as Tid + 10;
        for tid in 1..=n {
            // Thread `tid` gets `tid % 7` samples: the busiest are the ones kept listed.
            p.set_thread_name(tid, "worker");
            for _ in 0..tid % 7 {
                p.add_sample(tid, Some(s), StackEnd::Root, true);
            }
            p.retire_thread(tid);
        }
        let listed = p.exited_threads().len();
        assert!((MAX_EXITED_LISTED..=2 * MAX_EXITED_LISTED).contains(&listed));
        let (folded, folded_samples) = p.retired();
        assert_eq!(folded as usize + listed, n as usize);
        let expected: u64 = (1..=n).map(|t| (t % 7) as u64).sum();
        assert_eq!(p.total_samples(), expected);
        assert!(
            folded_samples < expected / 2,
            "the busiest threads stay listed"
        );
    }
}
