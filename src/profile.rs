//! Aggregation of unwound samples: frames and stacks interned once (stacks as a prefix tree
//! of (parent, frame) nodes, root first), sample counts per thread and stack. Pure data:
//! names are attached later, once per unique frame.

use std::collections::{BTreeMap, HashMap};

// Keys made of our own small ids, hashed once per sample, use Fx (several times cheaper than
// SipHash); keys the target chooses (addresses, thread names) keep SipHash, so a hostile
// target cannot make lookups collide.
use rustc_hash::FxHashMap;

use crate::types::{StackEnd, Tid};

/// Module id of frames that lie in no known module (JIT code, unmapped addresses).
pub const NO_MODULE: u32 = u32::MAX;
/// Module id of the marker frames that end an incomplete stack.
pub const MARKER: u32 = u32::MAX - 1;

/// A frame before naming: where the address lies and what kind of address it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameKey {
    /// Module id (`ModuleMap` index), `NO_MODULE` or `MARKER`.
    pub module: u32,
    /// Absolute address; for a marker, the marker kind.
    pub addr: u64,
    /// Return address (look up at addr - 1) rather than an exact pc.
    pub is_return: bool,
}

impl FrameKey {
    /// The marker frame standing at the root side of a stack that ended early.
    pub fn marker(end: StackEnd) -> Option<FrameKey> {
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

    /// The marker's display name, for a marker frame.
    pub fn marker_name(&self) -> Option<&'static str> {
        (self.module == MARKER).then_some(match self.addr {
            0 => "[truncated]",
            1 => "[unknown]",
            _ => "[max depth]",
        })
    }
}

/// Index of an interned stack (its leaf node).
pub type StackId = u32;

const ROOT: u32 = u32::MAX;

/// Per-thread facts.
#[derive(Clone, Debug, Default)]
pub struct ThreadStats {
    /// Latest name.
    pub name: String,
    /// Samples taken.
    pub samples: u64,
    /// Samples whose stack reached the thread's root.
    pub complete: u64,
    /// The name id samples are counted under, once known (reset when the name changes).
    name_id: Option<u32>,
}

/// Interned frames and stacks with their sample counts.
#[derive(Default)]
pub struct Profile {
    frames: Vec<FrameKey>,
    frame_index: HashMap<FrameKey, u32>,
    nodes: Vec<(u32, u32)>,
    node_index: FxHashMap<(u32, u32), u32>,
    counts: FxHashMap<(u32, StackId), u64>,
    thread_names: Vec<String>,
    thread_name_index: HashMap<String, u32>,
    threads: BTreeMap<Tid, ThreadStats>,
    retired: ThreadStats,
    retired_threads: u64,
    /// How stacks ended, over all samples.
    pub ends: FxHashMap<StackEnd, u64>,
}

impl Profile {
    /// An empty profile.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget interned frames, stacks and per-stack counts, keeping the per-thread totals.
    pub fn reset_interning(&mut self) {
        self.frames.clear();
        self.frame_index.clear();
        self.nodes.clear();
        self.node_index.clear();
        self.counts.clear();
    }

    /// Intern a frame.
    pub fn frame(&mut self, key: FrameKey) -> u32 {
        if let Some(&i) = self.frame_index.get(&key) {
            return i;
        }
        let i = self.frames.len() as u32;
        self.frames.push(key);
        self.frame_index.insert(key, i);
        i
    }

    /// Every interned frame, by index.
    pub fn frames(&self) -> &[FrameKey] {
        &self.frames
    }

    /// Intern a stack given leaf first; an incomplete stack gets its marker at the root.
    /// None for an empty stack.
    pub fn intern(&mut self, leaf_first: &[FrameKey], end: StackEnd) -> Option<StackId> {
        let mut node = ROOT;
        let marker = FrameKey::marker(end);
        for key in marker.iter().chain(leaf_first.iter().rev()) {
            let f = self.frame(*key);
            node = match self.node_index.get(&(node, f)) {
                Some(&n) => n,
                None => {
                    let n = self.nodes.len() as u32;
                    self.nodes.push((node, f));
                    self.node_index.insert((node, f), n);
                    n
                }
            };
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

    /// Count one sample of `tid` with `stack`, under the thread's name at this time.
    pub fn add_sample(&mut self, tid: Tid, stack: StackId, end: StackEnd) {
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
        t.samples += 1;
        if end.is_complete() {
            t.complete += 1;
        }
        *self.counts.entry((name_id, stack)).or_default() += 1;
        *self.ends.entry(end).or_default() += 1;
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

    /// A thread that exited: fold its totals into the retired ones, so a target that
    /// creates threads all day does not grow the table.
    pub fn retire_thread(&mut self, tid: Tid) {
        if let Some(t) = self.threads.remove(&tid) {
            self.retired.samples += t.samples;
            self.retired.complete += t.complete;
            self.retired_threads += 1;
        }
    }

    /// Threads retired so far and their samples.
    pub fn retired(&self) -> (u64, u64) {
        (self.retired_threads, self.retired.samples)
    }

    /// Sample counts by (thread name id, stack).
    pub fn counts(&self) -> &FxHashMap<(u32, StackId), u64> {
        &self.counts
    }

    /// The thread name behind a name id of `counts`.
    pub fn thread_name(&self, id: u32) -> &str {
        self.thread_names
            .get(id as usize)
            .map_or("?", String::as_str)
    }

    /// All samples.
    pub fn total_samples(&self) -> u64 {
        self.retired.samples + self.threads.values().map(|t| t.samples).sum::<u64>()
    }

    /// Samples whose stack reached the root.
    pub fn complete_samples(&self) -> u64 {
        self.retired.complete + self.threads.values().map(|t| t.complete).sum::<u64>()
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

    #[test]
    fn stacks_share_prefixes_and_round_trip() {
        let mut p = Profile::new();
        let a = p.intern(&[f(3), f(2), f(1)], StackEnd::Root).unwrap();
        let b = p.intern(&[f(4), f(2), f(1)], StackEnd::Root).unwrap();
        let a2 = p.intern(&[f(3), f(2), f(1)], StackEnd::Root).unwrap();
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_eq!(p.frames().len(), 4);
        let mut out = Vec::new();
        p.stack_frames(b, &mut out);
        let addrs: Vec<u64> = out.iter().map(|&i| p.frames()[i as usize].addr).collect();
        assert_eq!(addrs, vec![4, 2, 1]);
    }

    #[test]
    fn incomplete_stacks_carry_a_marker_at_the_root() {
        let mut p = Profile::new();
        let s = p.intern(&[f(9)], StackEnd::Truncated).unwrap();
        let mut out = Vec::new();
        p.stack_frames(s, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            p.frames()[out[1] as usize].marker_name(),
            Some("[truncated]")
        );
        p.set_thread_name(5, "worker");
        p.add_sample(5, s, StackEnd::Truncated);
        p.add_sample(5, s, StackEnd::Truncated);
        let (&(name, _), &n) = p.counts().iter().next().unwrap();
        assert_eq!((p.thread_name(name), n), ("worker", 2));
        assert_eq!(p.total_samples(), 2);
        assert_eq!(p.complete_samples(), 0);
        // A retired thread keeps its samples in the totals and its counts by name.
        p.retire_thread(5);
        assert!(p.threads().is_empty());
        assert_eq!(p.total_samples(), 2);
        assert_eq!(p.retired(), (1, 2));
        assert_eq!(p.counts().len(), 1);
        assert!(p.intern(&[], StackEnd::Root).is_none());
    }
}
