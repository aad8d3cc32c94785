//! Python frames for the stack sources: finds the interpreter when the maps show one, keeps
//! the map from kernel threads to the interpreter's thread states, and reads a thread's
//! Python frame chain (code-object addresses and instruction offsets only, a few page
//! reads) so the ptrace source can do it inside the same stop as the native stack. Code
//! objects are resolved later, by the unwind stage.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::os::files::{TargetRoot, open_mapping};
use crate::os::{proc, vm};
use crate::procmaps::Mapping;
use crate::python::detect::{self, Detection};
use crate::python::walk;
use crate::python::{PyRawStack, PythonTarget};
use crate::types::{Pid, Tid};

/// How often the thread-state list is read again (new threads, new Python threads).
const THREADS_INTERVAL: Duration = Duration::from_millis(50);

/// The Python side of a source.
pub struct PyReader {
    pid: Pid,
    root: Option<TargetRoot>,
    target: Option<Arc<PythonTarget>>,
    /// Files already looked at (an interpreter is looked for again only when a new
    /// candidate is mapped).
    checked: HashSet<(String, u64)>,
    said: bool,
    tstates: HashMap<Tid, u64>,
    pthread_tid: Option<u64>,
    refreshed: Option<Instant>,
    /// Stacks read.
    pub reads: u64,
    /// Stacks that ended early (unreadable pointer, depth bound).
    pub incomplete: u64,
}

impl PyReader {
    /// For process `pid` (its root is taken now, to open its files as it sees them).
    pub fn new(pid: Pid) -> PyReader {
        PyReader {
            pid,
            root: TargetRoot::open(pid).ok(),
            target: None,
            checked: HashSet::new(),
            said: false,
            tstates: HashMap::new(),
            pthread_tid: None,
            refreshed: None,
            reads: 0,
            incomplete: 0,
        }
    }

    /// The maps changed: look for an interpreter among newly mapped files. Returns the
    /// target when first found, and a line for the summary when there is something to say
    /// (found, or found and not supported).
    pub fn on_maps(&mut self, maps: &[Mapping]) -> (Option<Arc<PythonTarget>>, Option<String>) {
        if self.target.is_some() {
            return (None, None);
        }
        let fresh = maps
            .iter()
            .filter(|m| m.is_file())
            .any(|m| !self.checked.contains(&(m.path.clone(), m.inode)));
        if !fresh {
            return (None, None);
        }
        for m in maps.iter().filter(|m| m.is_file()) {
            self.checked.insert((m.path.clone(), m.inode));
        }
        let exe = proc::exe_path(self.pid);
        let reader = vm::LiveProcess(proc::live_task(self.pid).unwrap_or(self.pid));
        let pid = self.pid;
        let root = self.root.as_ref();
        match detect::detect(
            maps,
            exe.as_deref(),
            |m| open_mapping(pid, m, root).map(|(b, _)| b),
            &reader,
        ) {
            Detection::NotPython => (None, None),
            Detection::Unsupported(line) => {
                if self.said {
                    return (None, None);
                }
                self.said = true;
                (None, Some(line))
            }
            Detection::Supported(t) => {
                let t: Arc<PythonTarget> = Arc::from(t);
                let name = Path::new(&t.interpreter_path)
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                let line = format!(
                    "python: CPython {} ({name}): Python frames merged with native frames",
                    t.version
                );
                self.target = Some(t.clone());
                (Some(t), Some(line))
            }
        }
    }

    /// True once an interpreter the agent reads was found.
    pub fn active(&self) -> bool {
        self.target.is_some()
    }

    /// Read the interpreter's thread list again when it is older than a few ticks (or
    /// `force`): which thread state belongs to which kernel thread. `tids`: the target's
    /// threads, to find where glibc keeps the tid (before 3.11).
    pub fn refresh_threads(&mut self, tids: &[Tid], force: bool) {
        let Some(t) = &self.target else { return };
        if !force
            && self
                .refreshed
                .is_some_and(|r| r.elapsed() < THREADS_INTERVAL)
        {
            return;
        }
        self.refreshed = Some(Instant::now());
        let mem = vm::LiveProcess(proc::live_task(self.pid).unwrap_or(self.pid));
        let states = walk::thread_states(&mem, &t.layout, t.runtime);
        if t.layout.tstate_native_thread_id.is_none() && self.pthread_tid.is_none() {
            self.pthread_tid = walk::find_pthread_tid_offset(&mem, &states, tids);
        }
        self.tstates = walk::by_tid(&mem, &states, self.pthread_tid);
    }

    /// Read thread `tid`'s Python frames (leaf first); None when it has no thread state.
    pub fn read(&mut self, tid: Tid) -> Option<PyRawStack> {
        let t = self.target.as_ref()?;
        let &ts = self.tstates.get(&tid)?;
        let mut out = PyRawStack::default();
        walk::read_stack(&vm::LiveProcess(tid), &t.layout, ts, &mut out);
        self.reads += 1;
        if !out.complete {
            self.incomplete += 1;
        }
        Some(out)
    }
}
