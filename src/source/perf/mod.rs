//! The perf_event stack source: the kernel samples the target's threads itself, without
//! stopping them, and writes each sample (registers and a copy of the top of the user
//! stack) into ring buffers the agent reads every few ticks (10 to 50 ms apart; see
//! [`wake_interval`]), replaying the wall-clock ticks due meanwhile in time order with the
//! records.
//!
//! * **On CPU**: a `cpu-clock` event per thread and CPU, one sample per `1/frequency` of the
//!   thread's CPU time, inherited by threads created later.
//! * **Off CPU**, for the wall-clock model: a thread that did not run during a tick still
//!   gets a sample at that tick, with the stack it waits in. Where the kernel allows
//!   kernel-side events (`CAP_PERFMON`, or `perf_event_paranoid` ≤ 1), a
//!   `context-switches` event takes a sample each time a thread is switched out, and the
//!   last one of a thread that blocked stands for every tick until it runs again. A thread
//!   preempted while it still wants to run is sampled by its CPU time like a running one,
//!   so waiting for a CPU piles samples nowhere.
//!   Otherwise the context-switch records (no stack) say when a thread blocked, and its
//!   stack is read then from where `/proc/PID/task/TID/syscall` says it waits. Threads
//!   asleep since before the attach are read that way once.
//! * **Deep stacks**: the kernel copies at most [`KERNEL_STACK_BYTES`]; a sample whose copy
//!   is full is completed from the thread's previous sample when the copy ends on the same
//!   bytes, else from the live process after checking that the end of the copy is still
//!   there ([`StackCache`]); otherwise the stack ends in a visible `[truncated]` frame.
//!
//! The same events as the ptrace source come out ([`SourceEvent`]), so everything after
//! the source is shared.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use linux_perf_event_reader::{
    CommOrExecRecord, ContextSwitchRecord, EventRecord, RawData, RecordType, TaskWasPreempted,
};
use nix::errno::Errno;

use super::ptrace::timer::Schedule;
use super::python::PyReader;
use super::stack_cache::{Completion, StackCache};
use super::{Captured, Outbox, RawSample, SourceEvent, SourceStats, StackSource, StopReason};
use crate::os::perf::{self, EventKind, EventSpec, PerfEvent, RingBuffer};
use crate::os::proc::{self, ThreadWatch};
use crate::os::signals::{self, Wake};
use crate::os::vm;
use crate::procmaps::{self, Mapping};
use crate::types::{Pid, Regs, Tid};
use profiler_unwind::StackSnapshot;

/// Bytes of user stack the kernel copies into an on-CPU sample (perf's default is 8 KiB).
pub const KERNEL_STACK_BYTES: u32 = 16 * 1024;
/// ... into a context-switch sample (the thread waits: the rest is read while it does).
pub const SWITCH_STACK_BYTES: u32 = 8 * 1024;
/// The wall-clock ticks of a run: the next one due, and the first and last replayed.
struct Ticks {
    next: u64,
    first: Option<u64>,
    last: u64,
}

/// Data pages of each CPU's ring buffer, tried in turn from the largest that
/// [`ring_pages`] allows (the kernel limits what a user without `CAP_IPC_LOCK` may lock:
/// `perf_event_mlock_kb` times the number of CPUs, 516 KiB each by default, so 128 pages
/// per CPU, and beyond that what RLIMIT_MEMLOCK allows).
const RING_PAGES: [usize; 6] = [512, 256, 128, 64, 32, 16];
/// The most memory the ring buffers take together, when the kernel lets the agent lock
/// more than 128 pages per CPU: a burst of context-switch samples (100 threads that wake
/// in step: about 850 KB) fits in 2 MiB rings on a small machine, and a machine with many
/// CPUs keeps 512 KiB each.
const RING_BUDGET_BYTES: usize = 4 << 20;

/// The ring sizes to try on a machine with `cpus` CPUs, largest first.
fn ring_pages(cpus: usize) -> impl Iterator<Item = usize> {
    let most = (RING_BUDGET_BYTES / 4096 / cpus.max(1)).max(128);
    RING_PAGES.into_iter().filter(move |&p| p <= most)
}

/// The maps are re-read at least this often: executable mappings come as records, in
/// order with the samples, so the periodic read only catches what they do not report
/// (unmappings; a stack outside the known mappings asks for a read at once, below)...
const MAPS_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// ...and after a stack outside the known mappings, at most this often.
const MAPS_STALE_INTERVAL: Duration = Duration::from_millis(10);
/// How often the source checks that the target still runs.
const ALIVE_INTERVAL: Duration = Duration::from_millis(50);
/// How often a thread's name is read again besides the kernel's records of its changes.
const NAME_RECHECK_NS: u64 = 10_000_000_000;

/// How often the sampler wakes at most, whatever the rate: the kernel takes the samples,
/// and the wall-clock ticks of a batch are replayed in time order with the records
/// ([`PerfSource::run`]). Each wake costs the target a preemption on a busy machine; a
/// batch must stay well within a ring buffer (512 KiB holds 30 ms of 1000 Hz samples).
const WAKE_INTERVAL_NS: u64 = 10_000_000;
/// At low rates the sampler wakes every this many ticks instead, up to
/// [`WAKE_INTERVAL_MAX_NS`] (100 Hz: every 50 ms)...
const WAKE_TICKS: u64 = 5;
/// ...but no less often than this: a deep stack is completed from the live thread when
/// its sample is handled, and the later that is, the likelier the thread has returned
/// past the kernel's copy (the sample then ends in `[truncated]`).
const WAKE_INTERVAL_MAX_NS: u64 = 50_000_000;

/// How long the sampler sleeps between batches at `period_ns` per tick: a few ticks, but
/// every [`WAKE_INTERVAL_NS`] when `often`: while it reads Python frames or where blocked
/// threads are found through `/proc` (both read when a tick is replayed, not when the
/// kernel sampled: the longer the wait, the likelier they no longer match), and with
/// rings of 512 KiB or less (context-switch samples come at the workload's pace, not the
/// sampling rate's).
fn wake_interval(period_ns: u64, often: bool) -> u64 {
    if often {
        return WAKE_INTERVAL_NS;
    }
    period_ns
        .saturating_mul(WAKE_TICKS)
        .clamp(WAKE_INTERVAL_NS, WAKE_INTERVAL_MAX_NS)
}

/// Settings of the perf source.
#[derive(Clone, Debug)]
pub struct PerfConfig {
    /// Target process.
    pub pid: Pid,
    /// Samples per second per thread.
    pub frequency: f64,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Most stack bytes per sample.
    pub max_stack_bytes: usize,
    /// Try to run the source's thread at a real-time priority.
    pub realtime: bool,
}

/// A switch-out sample kept until a tick needs it.
struct Parked {
    time_ns: u64,
    regs: Regs,
    stack: Vec<u8>,
    /// The kernel's copy was cut at its size (the stack goes on above it).
    full: bool,
}

#[derive(Default)]
struct Slot {
    name: Option<String>,
    name_checked: Option<u64>,
    /// An on-CPU sample was sent during the current tick period.
    sampled: bool,
    /// Some sample of this thread went out (a repeat has something to repeat).
    sent: bool,
    /// Time of the last sample sent.
    sent_ns: u64,
    /// From context-switch records: on a CPU now (None: not known yet).
    on_cpu: Option<bool>,
    /// Time of the last context-switch record applied.
    switch_ns: u64,
    /// Switched out, not preempted, after the last sample sent (so its stack may be other).
    blocked_since_sent: bool,
    /// The latest switch-out sample, newer than the last sample sent.
    parked: Option<Parked>,
    cache: StackCache,
    watch: Option<ThreadWatch>,
}

/// Runs the perf source on the calling thread.
pub struct PerfSource {
    cfg: PerfConfig,
    out: Outbox,
    epoch: Instant,
    /// CLOCK_MONOTONIC at the epoch, in ns (sample times are on that clock).
    epoch_mono_ns: u64,
    cpus: Vec<i32>,
    rings: Vec<RingBuffer>,
    /// Data pages of each ring.
    ring_pages: usize,
    /// The events opened on threads that existed at the attach (later ones inherit them).
    events: HashMap<Tid, Vec<PerfEvent>>,
    cpu_spec: EventSpec,
    switch_spec: Option<EventSpec>,
    switch_ids: HashSet<u64>,
    threads: HashMap<Tid, Slot>,
    maps: Vec<Mapping>,
    maps_text: String,
    maps_read_at: Instant,
    maps_interval: Duration,
    maps_stale: bool,
    alive_checked: Instant,
    /// The leader's `stat`, kept open for [`PerfSource::target_alive`] (None: it could
    /// not be opened, the target is gone).
    leader_stat: Option<proc::StatFile>,
    stats: SourceStats,
    spare: Vec<Vec<u8>>,
    /// Scratch: one drain's records, in time order.
    items: Vec<Item>,
    /// Python frames: read when the sample is drained (the thread has run on since the
    /// kernel's copy; the merge's check of eval-loop frames against Python frames catches a
    /// thread that entered or left the eval loop in between, and such samples fall back).
    py: PyReader,
}

/// One record of a drain, owned.
enum Item {
    Sample {
        tid: Tid,
        time_ns: u64,
        switch: bool,
        regs: Regs,
        stack: Vec<u8>,
        full: bool,
    },
    Switch {
        tid: Tid,
        time_ns: u64,
        out: bool,
        preempted: bool,
    },
    Name {
        tid: Tid,
        time_ns: u64,
        name: String,
        exec: bool,
    },
    Exit {
        tid: Tid,
        time_ns: u64,
    },
    /// An executable mapping made.
    Mmap {
        time_ns: u64,
        mapping: Mapping,
    },
}

impl Item {
    fn time(&self) -> u64 {
        match self {
            Item::Sample { time_ns, .. }
            | Item::Switch { time_ns, .. }
            | Item::Name { time_ns, .. }
            | Item::Exit { time_ns, .. }
            | Item::Mmap { time_ns, .. } => *time_ns,
        }
    }
}

/// Why the perf source cannot run, in words for the summary and errors.
#[derive(Debug)]
pub struct Refused {
    /// The kernel's error.
    pub errno: Errno,
    /// The cause and what to do about it.
    pub reason: String,
}

/// The mapping an `MMAP2` record describes, when it is executable.
fn exec_mapping(m: &linux_perf_event_reader::Mmap2Record<'_>) -> Option<Mapping> {
    use linux_perf_event_reader::Mmap2FileId;
    if m.protection & libc::PROT_EXEC as u32 == 0 {
        return None;
    }
    let (dev_major, dev_minor, inode) = match &m.file_id {
        Mmap2FileId::InodeAndVersion(f) => (f.major, f.minor, f.inode),
        Mmap2FileId::BuildId(_) => (0, 0, 0),
    };
    let mut path = String::from_utf8_lossy(&m.path.as_slice()).into_owned();
    let deleted = path.ends_with(" (deleted)");
    if deleted {
        path.truncate(path.len() - " (deleted)".len());
    }
    Some(Mapping {
        start: m.address,
        end: m.address.saturating_add(m.length),
        read: m.protection & libc::PROT_READ as u32 != 0,
        write: m.protection & libc::PROT_WRITE as u32 != 0,
        exec: true,
        offset: m.page_offset,
        dev_major,
        dev_minor,
        inode,
        path,
        deleted,
    })
}

fn now_mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

impl PerfSource {
    /// Open the events on every thread of the target. Fails (with the reason) when the
    /// kernel does not allow it; nothing is left open then.
    pub fn open(
        cfg: PerfConfig,
        out: Outbox,
        epoch: Instant,
    ) -> Result<PerfSource, Box<(Refused, Outbox)>> {
        // The outbox is built into the source early; on a refusal it is handed back for
        // the fallback source.
        let mut out = Some(out);
        Self::open_with(cfg, &mut out, epoch).map_err(|r| Box::new((r, out.take().expect("kept"))))
    }

    /// How it samples, for the summary.
    pub fn describe(&self) -> String {
        let on_cpu = if self.cpu_spec.exclude_kernel {
            "on-CPU cpu-clock samples in user mode only (perf_event_paranoid without \
             CAP_PERFMON)"
        } else {
            "on-CPU cpu-clock samples"
        };
        let off_cpu = if self.switch_spec.is_some() {
            "blocked threads from their context-switch samples"
        } else {
            "blocked threads read from /proc when they block (no context-switch samples \
             without CAP_PERFMON or perf_event_paranoid <= 1)"
        };
        format!(
            "{on_cpu}; {off_cpu}; ring buffers of {} KiB per CPU",
            self.ring_pages * 4
        )
    }

    fn open_with(
        cfg: PerfConfig,
        outbox: &mut Option<Outbox>,
        epoch: Instant,
    ) -> Result<PerfSource, Refused> {
        let refused = |errno: Errno| {
            let me = crate::os::permissions::Privileges::current();
            Refused {
                errno,
                reason: perf::explain(
                    errno,
                    perf::paranoid(),
                    me.seccomp,
                    me.cap_eff & (1 << 38) != 0,
                ),
            }
        };
        let cpus = perf::online_cpus();
        let period_ns = (1e9 / cfg.frequency).round().max(1000.0) as u64;
        let mut cpu_spec = EventSpec {
            kind: EventKind::CpuClock { period_ns },
            stack_bytes: KERNEL_STACK_BYTES,
            exclude_kernel: false,
            side_band: true,
        };
        // The first event tells what is permitted: samples in kernel mode too (the
        // thread's user registers and stack are taken then as well), else user mode only.
        let first = match PerfEvent::open(&cpu_spec, cfg.pid, cpus[0]) {
            Ok(e) => e,
            Err(Errno::EACCES | Errno::EPERM) => {
                cpu_spec.exclude_kernel = true;
                PerfEvent::open(&cpu_spec, cfg.pid, cpus[0]).map_err(refused)?
            }
            Err(e) => return Err(refused(e)),
        };
        let switch_spec = (!cpu_spec.exclude_kernel).then_some(EventSpec {
            kind: EventKind::ContextSwitches,
            stack_bytes: SWITCH_STACK_BYTES,
            exclude_kernel: false,
            side_band: false,
        });
        let cfg_pid = cfg.pid;
        let mut s = PerfSource {
            cfg,
            out: outbox.take().expect("not taken yet"),
            epoch,
            epoch_mono_ns: now_mono_ns().saturating_sub(epoch.elapsed().as_nanos() as u64),
            cpus: cpus.clone(),
            rings: Vec::new(),
            events: HashMap::new(),
            cpu_spec,
            switch_spec,
            switch_ids: HashSet::new(),
            threads: HashMap::new(),
            maps: Vec::new(),
            maps_text: String::new(),
            maps_read_at: Instant::now(),
            maps_interval: MAPS_MIN_INTERVAL,
            maps_stale: false,
            alive_checked: Instant::now(),
            ring_pages: 0,
            leader_stat: proc::StatFile::open(cfg_pid, cfg_pid),
            stats: SourceStats {
                source: "perf",
                ..SourceStats::default()
            },
            spare: Vec::new(),
            items: Vec::new(),
            py: PyReader::new(cfg_pid),
        };
        let mut first = Some(first);
        if let Err(r) = s.open_all(&mut first, &refused) {
            let PerfSource { out, .. } = s;
            *outbox = Some(out);
            return Err(r);
        }
        s.refresh_maps();
        let mut tids: Vec<Tid> = s.events.keys().copied().collect();
        tids.sort_unstable();
        for tid in tids {
            s.add_thread(tid);
        }
        Ok(s)
    }

    /// Map a ring buffer per CPU and open the events of every thread.
    fn open_all(
        &mut self,
        first: &mut Option<PerfEvent>,
        refused: &dyn Fn(Errno) -> Refused,
    ) -> Result<(), Refused> {
        // One ring buffer per CPU, mapped from the leader's event of that CPU, all of one
        // size: the largest every CPU gets. The kernel counts locked ring memory per user
        // over all CPUs (and then against RLIMIT_MEMLOCK), so the first CPUs taking large
        // rings could leave none for the last ones.
        let cpus = self.cpus.clone();
        let mut last = Errno::ENOMEM;
        'sizes: for pages in ring_pages(cpus.len()) {
            let mut rings = Vec::with_capacity(cpus.len());
            for &cpu in &cpus {
                let ev = match first.take() {
                    Some(e) => e,
                    None => PerfEvent::open(&self.cpu_spec, self.cfg.pid, cpu).map_err(refused)?,
                };
                match RingBuffer::new(ev, pages, &self.cpu_spec) {
                    Ok(r) => rings.push(r),
                    Err(e) => {
                        // The rings mapped so far go (their memory with them) before the
                        // next size is tried.
                        last = e;
                        continue 'sizes;
                    }
                }
            }
            self.rings = rings;
            self.ring_pages = pages;
            break;
        }
        if self.rings.is_empty() {
            return Err(Refused {
                errno: last,
                reason: format!(
                    "the kernel refused a ring buffer ({}): kernel.perf_event_mlock_kb \
                     is too low for the agent's user",
                    last.desc()
                ),
            });
        }
        // Every thread, again until a listing finds none new (threads created meanwhile
        // by a thread that already has its events inherit them).
        loop {
            let tids = proc::list_tasks(self.cfg.pid)
                .map_err(|e| refused(Errno::from_raw(e.raw_os_error().unwrap_or(libc::ESRCH))))?;
            let mut new = 0;
            for tid in tids {
                if self.events.contains_key(&tid) {
                    continue;
                }
                match self.open_thread(tid) {
                    Ok(()) => new += 1,
                    Err(Errno::ESRCH) if tid != self.cfg.pid => {}
                    Err(e) => {
                        // A switch event refused while the clock event was allowed
                        // (seccomp or an LSM per event): sample on CPU only.
                        if self.switch_spec.is_some() && self.events.is_empty() {
                            self.switch_spec = None;
                            if self.open_thread(tid).is_ok() {
                                new += 1;
                                continue;
                            }
                        }
                        return Err(refused(e));
                    }
                }
            }
            if new == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Open the events of one thread on every CPU. The leader's clock events are the
    /// rings' own.
    fn open_thread(&mut self, tid: Tid) -> Result<(), Errno> {
        let mut evs = Vec::new();
        for (i, &cpu) in self.cpus.iter().enumerate() {
            if tid != self.cfg.pid {
                let e = PerfEvent::open(&self.cpu_spec, tid, cpu)?;
                e.output_to(&self.rings[i])?;
                evs.push(e);
            }
            if let Some(spec) = self.switch_spec {
                let e = PerfEvent::open(&spec, tid, cpu)?;
                e.output_to(&self.rings[i])?;
                self.switch_ids.insert(e.id);
                evs.push(e);
            }
        }
        self.events.insert(tid, evs);
        Ok(())
    }

    /// Threads known now.
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// True when context-switch samples give blocked threads their stacks.
    pub fn switch_samples(&self) -> bool {
        self.switch_spec.is_some()
    }

    /// How long to sleep between batches now (see [`wake_interval`]).
    fn wake_interval(&self, period_ns: u64) -> u64 {
        let often = self.py.active() || !self.switch_samples() || self.ring_pages <= 128;
        wake_interval(period_ns, often)
    }

    fn add_thread(&mut self, tid: Tid) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.threads.entry(tid) {
            self.stats.threads_seen += 1;
            e.insert(Slot::default());
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn refresh_maps(&mut self) -> bool {
        let t0 = Instant::now();
        let Ok(text) = proc::read_maps(self.cfg.pid) else {
            return false;
        };
        self.maps_interval = (t0.elapsed() * 200).max(MAPS_MIN_INTERVAL);
        self.maps_read_at = Instant::now();
        self.maps_stale = false;
        if text != self.maps_text {
            self.maps = procmaps::parse(&text);
            self.maps_text = text.clone();
            self.out.control(SourceEvent::Maps(text));
            let (target, note) = self.py.on_maps(&self.maps);
            if let Some(t) = target {
                self.out.control(SourceEvent::Python(t));
            }
            self.stats.notes.extend(note);
        }
        true
    }

    /// An executable mapping was made (records come in order with the samples): unless
    /// the maps known have it already, read them now, so the samples after it are named
    /// with it. When the maps read no longer hold it either (changed again since), the
    /// mapping is put over the known ones for the samples in between.
    fn mapped(&mut self, m: Mapping) {
        let known = |maps: &[Mapping]| {
            procmaps::find(maps, m.start).is_some_and(|k| {
                k.start == m.start && k.exec && k.inode == m.inode && k.path == m.path
            })
        };
        if known(&self.maps) {
            return;
        }
        self.stats.linkmap_changes += 1;
        if self.refresh_maps() && known(&self.maps) {
            return;
        }
        procmaps::overlay(&mut self.maps, m);
        self.out
            .control(SourceEvent::Maps(procmaps::render(&self.maps)));
    }

    /// False once the target has exited (every thread gone or a zombie).
    fn target_alive(&mut self) -> bool {
        // The leader's own stat: the process's (`/proc/PID/stat`) sums the times of every
        // thread, a cost that grows with the thread count. Kept open: read 20 times a
        // second.
        match self.leader_stat.as_mut().and_then(proc::StatFile::read) {
            None => false,
            Some(st) if matches!(st.state, 'Z' | 'X') => proc::list_tasks(self.cfg.pid)
                .map(|tids| {
                    tids.iter().any(|&t| {
                        proc::thread_stat(self.cfg.pid, t)
                            .is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
                    })
                })
                .unwrap_or(false),
            Some(_) => true,
        }
    }

    fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_else(|| self.out.buffer())
    }

    /// Read every ring buffer into `items`, in time order.
    fn drain(&mut self) {
        let pid = self.cfg.pid;
        let mono0 = self.epoch_mono_ns;
        let switch_ids = &self.switch_ids;
        let mut items = std::mem::take(&mut self.items);
        let mut lost = 0u64;
        let mut spare = std::mem::take(&mut self.spare);
        let out = &mut self.out;
        let maps = &self.maps;
        for ring in &mut self.rings {
            ring.drain(|rec| {
                let time = |t: Option<u64>| t.unwrap_or(0).saturating_sub(mono0);
                if rec.record_type == RecordType::LOST {
                    if let Ok(EventRecord::Lost(l)) = rec.parse() {
                        lost += l.count;
                    }
                    return;
                }
                let common = rec.common_data().ok();
                let (rpid, rtid, rtime) = common
                    .as_ref()
                    .map_or((None, None, None), |c| (c.pid, c.tid, c.timestamp));
                match rec.parse() {
                    Ok(EventRecord::Sample(smp)) => {
                        let (Some(spid), Some(tid)) = (smp.pid, smp.tid) else {
                            return;
                        };
                        if spid != pid {
                            return;
                        }
                        let Some(regs) = smp.user_regs.as_ref() else {
                            return;
                        };
                        let regs = perf::regs_from_perf(|n| regs.get(n));
                        let switch = smp.id.is_some_and(|id| switch_ids.contains(&id));
                        let mut stack = spare.pop().unwrap_or_else(|| out.buffer());
                        stack.clear();
                        let mut full = false;
                        if let Some((data, dyn_size)) = smp.user_stack {
                            let n = (dyn_size as usize).min(data.len());
                            full = n == data.len() && n > 0;
                            // The kernel copies on past the end of the thread's stack into
                            // whatever is mapped above it: those bytes are not copied
                            // again (`send_stack` drops them).
                            let sp = regs.sp();
                            let used = procmaps::find_stack(maps, sp)
                                .map_or(n, |(_, top)| n.min(top.saturating_sub(sp) as usize));
                            copy_raw(data, used, &mut stack);
                        }
                        items.push(Item::Sample {
                            tid,
                            time_ns: time(smp.timestamp),
                            switch,
                            regs,
                            stack,
                            full,
                        });
                    }
                    Ok(EventRecord::ContextSwitch(sw)) => {
                        let (Some(p), Some(tid)) = (rpid, rtid) else {
                            return;
                        };
                        if p != pid {
                            return;
                        }
                        let (out, preempted) = match sw {
                            ContextSwitchRecord::In { .. } => (false, false),
                            ContextSwitchRecord::Out { preempted, .. } => {
                                (true, preempted == TaskWasPreempted::Yes)
                            }
                        };
                        items.push(Item::Switch {
                            tid,
                            time_ns: time(rtime),
                            out,
                            preempted,
                        });
                    }
                    Ok(EventRecord::Comm(CommOrExecRecord {
                        pid: p,
                        tid,
                        name,
                        is_execve,
                    })) if p == pid => {
                        items.push(Item::Name {
                            tid,
                            time_ns: time(rtime),
                            name: String::from_utf8_lossy(&name.as_slice()).into_owned(),
                            exec: is_execve,
                        });
                    }
                    Ok(EventRecord::Mmap2(m)) if m.pid == pid => {
                        if let Some(mapping) = exec_mapping(&m) {
                            items.push(Item::Mmap {
                                time_ns: time(rtime),
                                mapping,
                            });
                        }
                    }
                    Ok(EventRecord::Exit(e)) if e.pid == pid => {
                        items.push(Item::Exit {
                            tid: e.tid,
                            time_ns: e.timestamp.saturating_sub(mono0),
                        });
                    }
                    Ok(EventRecord::Fork(f)) if f.pid == pid => {
                        // A new thread: known from its first record on (its name and
                        // samples follow).
                        items.push(Item::Name {
                            tid: f.tid,
                            time_ns: f.timestamp.saturating_sub(mono0),
                            name: String::new(),
                            exec: false,
                        });
                    }
                    _ => {}
                }
            });
        }
        // Kept for reuse: a few, and not the large ones (a deep stack's buffer goes back
        // through the outbox's pool instead).
        spare.retain(|b| b.capacity() <= 64 * 1024);
        spare.truncate(16);
        self.spare = spare;
        self.stats.missed += lost;
        // Stable: records of one CPU are in order already.
        items.sort_by_key(Item::time);
        self.items = items;
    }

    /// Handle the drained records up to `time_ns`, keeping the later ones.
    fn process_until(&mut self, time_ns: u64) {
        let n = self.items.partition_point(|i| i.time() <= time_ns);
        let later = self.items.split_off(n);
        self.process();
        self.items = later;
    }

    /// Handle one drain's records.
    fn process(&mut self) {
        let items = std::mem::take(&mut self.items);
        let mut exits = Vec::new();
        let mut it = items.into_iter();
        for item in it.by_ref() {
            match item {
                Item::Name {
                    tid, name, exec, ..
                } => {
                    self.add_thread(tid);
                    if exec {
                        self.refresh_maps();
                        for t in self.threads.values_mut() {
                            t.cache.clear();
                        }
                    }
                    if !name.is_empty() {
                        let slot = self.threads.get_mut(&tid).expect("just added");
                        if slot.name.as_deref() != Some(name.as_str()) {
                            slot.name = Some(name.clone());
                            self.out.control(SourceEvent::ThreadName { tid, name });
                        }
                    }
                }
                Item::Exit { tid, .. } => exits.push(tid),
                Item::Mmap { mapping, .. } => self.mapped(mapping),
                Item::Switch {
                    tid,
                    time_ns,
                    out,
                    preempted,
                } => {
                    self.add_thread(tid);
                    let slot = self.threads.get_mut(&tid).expect("just added");
                    if time_ns >= slot.switch_ns {
                        slot.switch_ns = time_ns;
                        // A preempted thread still wants to run: like a running one, it is
                        // sampled by its CPU time (cpu-clock), so waiting for a CPU piles
                        // no samples anywhere. Only a thread that blocks leaves the CPU.
                        slot.on_cpu = Some(!out || preempted);
                        if out && preempted {
                            if let Some(p) = slot.parked.take() {
                                self.spare.push(p.stack);
                            }
                        } else if out && time_ns >= slot.sent_ns {
                            slot.blocked_since_sent = true;
                        }
                    }
                }
                Item::Sample {
                    tid,
                    time_ns,
                    switch: true,
                    regs,
                    stack,
                    full,
                } => {
                    self.add_thread(tid);
                    let slot = self.threads.get_mut(&tid).expect("just added");
                    let newer = slot.parked.as_ref().is_none_or(|p| time_ns >= p.time_ns)
                        && (!slot.sent || time_ns >= slot.sent_ns);
                    if newer {
                        if let Some(old) = slot.parked.replace(Parked {
                            time_ns,
                            regs,
                            stack,
                            full,
                        }) {
                            self.spare.push(old.stack);
                        }
                    } else {
                        self.spare.push(stack);
                    }
                }
                Item::Sample {
                    tid,
                    time_ns,
                    switch: false,
                    regs,
                    stack,
                    full,
                } => {
                    self.add_thread(tid);
                    let slot = self.threads.get_mut(&tid).expect("just added");
                    slot.sampled = true;
                    if slot.parked.as_ref().is_some_and(|p| p.time_ns <= time_ns)
                        && let Some(old) = slot.parked.take()
                    {
                        self.spare.push(old.stack);
                    }
                    self.send_stack(tid, time_ns, regs, stack, full, true);
                }
            }
        }
        for tid in exits {
            self.forget(tid);
        }
    }

    /// Complete a stack copied by the kernel and send it as `tid`'s sample at `time_ns`.
    fn send_stack(
        &mut self,
        tid: Tid,
        time_ns: u64,
        regs: Regs,
        mut stack: Vec<u8>,
        full: bool,
        on_cpu: bool,
    ) {
        let sp = regs.sp();
        let range = procmaps::find_stack(&self.maps, sp);
        self.maps_stale |= range.is_none();
        let max = self.cfg.max_stack_bytes as u64;
        let slot = self.threads.get_mut(&tid).expect("known thread");
        self.stats.stack_bytes += stack.len() as u64;
        let mut tail = None;
        if let Some((_, hi)) = range {
            let top = hi.min(sp.saturating_add(max));
            if full && sp + (stack.len() as u64) < top {
                match slot
                    .cache
                    .complete(sp, top, &mut stack, true, |a, b| vm::read(tid, a, b))
                {
                    Completion::Complete { read, reused } => {
                        tail = slot.cache.splice(sp, &mut stack);
                        self.stats.stack_bytes += read as u64;
                        self.stats.stack_bytes_reused += reused as u64;
                    }
                    Completion::Short => {}
                    Completion::SeamMoved => self.stats.seam_moved += 1,
                }
            } else {
                // The whole stack is in the kernel's copy: the next sample's base.
                stack.truncate(top.saturating_sub(sp) as usize);
                slot.cache.keep(sp, top, &stack);
            }
        }
        slot.sent = true;
        slot.sent_ns = time_ns;
        slot.blocked_since_sent = false;
        self.stats.captured += 1;
        let sample = RawSample {
            tid,
            time_ns,
            on_cpu,
            python: self.py.read(tid),
            captured: Captured::Stack {
                regs,
                stack: StackSnapshot {
                    start: sp,
                    bytes: stack,
                },
                tail,
            },
        };
        self.out.sample(sample, 0, &mut self.stats);
    }

    fn forget(&mut self, tid: Tid) {
        if let Some(slot) = self.threads.remove(&tid) {
            if !slot.sent {
                self.stats.threads_unsampled += 1;
            }
            if let Some(p) = slot.parked {
                self.spare.push(p.stack);
            }
            self.events.remove(&tid);
            self.out.control(SourceEvent::ThreadExited(tid));
        }
    }

    /// The wall-clock tick at `now` (the records up to it handled): every thread that had
    /// no on-CPU sample since the last tick gets one, with the stack it waits in.
    fn tick(&mut self, now: u64) {
        let pid = self.cfg.pid;
        let mut tids: Vec<Tid> = self.threads.keys().copied().collect();
        tids.sort_unstable();
        let mut repeats = Vec::new();
        for tid in tids {
            let slot = self.threads.get_mut(&tid).expect("listed");
            // Names: on first sight, then from the kernel's records of name changes; read
            // again every 10 s in case those records were lost.
            if slot
                .name_checked
                .is_none_or(|t| now.saturating_sub(t) >= NAME_RECHECK_NS)
            {
                slot.name_checked = Some(now);
                if let Some(n) = proc::thread_name(pid, tid)
                    && slot.name.as_deref() != Some(n.as_str())
                {
                    slot.name = Some(n.clone());
                    self.out.control(SourceEvent::ThreadName { tid, name: n });
                }
            }
            if std::mem::take(&mut slot.sampled) {
                continue;
            }
            if slot.on_cpu == Some(true) {
                // Running since its last switch-in: its on-CPU sample stands for it.
                continue;
            }
            if let Some(p) = slot.parked.take() {
                // Switched out (blocked or preempted) and not run since: that stack.
                self.stats.switch_samples += 1;
                self.send_stack(tid, now, p.regs, p.stack, p.full, false);
                continue;
            }
            if slot.sent && !slot.blocked_since_sent {
                self.stats.repeated += 1;
                repeats.push(tid);
                continue;
            }
            // Never sampled (asleep since before the attach), or blocked since its last
            // sample without a switch sample to show where: read where it waits.
            if slot.watch.is_none() {
                slot.watch = ThreadWatch::open(pid, tid);
            }
            let Some((sp, pc)) = slot.watch.as_mut().and_then(|w| w.blocked_at()) else {
                if slot.sent {
                    self.stats.repeated += 1;
                    repeats.push(tid);
                }
                continue;
            };
            let mut regs = Regs::default();
            regs.set(Regs::RSP, sp);
            regs.set(Regs::RIP, pc);
            let mut stack = self.buffer();
            stack.clear();
            self.stats.proc_captures += 1;
            self.send_stack(tid, now, regs, stack, true, false);
        }
        if !repeats.is_empty() {
            self.out.repeat(repeats, now, false, &mut self.stats);
        }
    }

    /// Replay the wall-clock ticks due by `now`, each after the records up to it.
    fn ticks_until(&mut self, now: u64, ticks: &mut Ticks, schedule: &mut Schedule) {
        let mut first = true;
        while ticks.next <= now {
            let t = ticks.next;
            self.process_until(t);
            if std::mem::take(&mut first) && self.py.active() {
                let all: Vec<Tid> = self.threads.keys().copied().collect();
                self.py.refresh_threads(&all, false);
            }
            ticks.first.get_or_insert(t);
            ticks.last = t;
            self.stats.ticks += 1;
            self.tick(t);
            // A batch replays up to a wake interval of ticks; ticks further behind than
            // that (the sampler itself was kept from running) are skipped and counted.
            let wake = self.wake_interval(schedule.period_ns());
            ticks.next = schedule.next(now.saturating_sub(wake)).max(t + 1);
        }
    }

    fn sleep_until(&mut self, deadline_ns: u64) -> Option<StopReason> {
        loop {
            let now = self.now_ns();
            if now >= deadline_ns {
                return None;
            }
            match signals::wait(Duration::from_nanos(deadline_ns - now)) {
                Wake::Timeout | Wake::Child => {}
                Wake::Stop(sig) => return Some(StopReason::Signal(sig)),
            }
        }
    }

    /// Sample until the duration ends, a stop signal arrives or the target exits; the
    /// events are closed on return (the target never noticed them).
    pub fn run(mut self) -> SourceStats {
        signals::precise_timers();
        self.stats.realtime = self.cfg.realtime && signals::raise_priority();
        let start = self.now_ns();
        let mut schedule = Schedule::new(start, self.cfg.frequency, 0.25, fastrand::u64(..));
        let end_ns = self.cfg.duration.map(|d| start + d.as_nanos() as u64);
        let mut ticks = Ticks {
            next: schedule.next(start),
            first: None,
            last: start,
        };
        // The first wake comes at the first tick (the first samples soon after the attach).
        let mut woke = start.saturating_sub(self.wake_interval(schedule.period_ns()));
        let stop = loop {
            // The kernel samples on its own: wake for the next tick, but not more often
            // than every wake interval; the ticks that fell due meanwhile are replayed.
            let wake = self.wake_interval(schedule.period_ns());
            let deadline = ticks.next.max(woke + wake);
            if let Some(end) = end_ns
                && deadline >= end
            {
                if let Some(r) = self.sleep_until(end) {
                    break r;
                }
                break StopReason::Duration;
            }
            if let Some(r) = self.sleep_until(deadline) {
                break r;
            }
            woke = self.now_ns();
            if self.alive_checked.elapsed() >= ALIVE_INTERVAL {
                self.alive_checked = Instant::now();
                if !self.target_alive() {
                    break StopReason::TargetExited;
                }
            }
            self.drain();
            self.ticks_until(woke, &mut ticks, &mut schedule);
            // Records after the wake wait for the next batch, after its earlier ticks.
            self.process_until(woke);
            // The maps are read after the samples taken so far are sent, so none of them
            // is named with maps newer than itself (mappings made before a sample come as
            // records ahead of it).
            let since = self.maps_read_at.elapsed();
            if (since >= self.maps_interval || (self.maps_stale && since >= MAPS_STALE_INTERVAL))
                && !self.refresh_maps()
            {
                break StopReason::TargetExited;
            }
            self.out.flush();
            if self.out.closed() {
                break StopReason::Aborted;
            }
        };
        for r in &self.rings {
            r.event().disable();
        }
        for evs in self.events.values() {
            for e in evs {
                e.disable();
            }
        }
        // The samples taken up to the stop, and the ticks due by then.
        let stopped = match (stop, end_ns) {
            (StopReason::Duration, Some(end)) => end,
            _ => self.now_ns(),
        };
        self.drain();
        if stop != StopReason::Aborted {
            self.ticks_until(stopped, &mut ticks, &mut schedule);
        }
        self.process();
        self.out.flush();
        let (first_tick, last_tick) = (ticks.first, ticks.last);
        self.events.clear();
        self.stats.ticks_skipped = schedule.skipped();
        self.stats.elapsed = last_tick.saturating_sub(first_tick.unwrap_or(last_tick)) as f64 / 1e9
            + schedule.period_ns() as f64 / 1e9;
        self.stats.stop = Some(stop);
        self.out.flush();
        self.stats
    }
}

impl StackSource for PerfSource {
    fn thread_count(&self) -> usize {
        PerfSource::thread_count(self)
    }

    fn run(self: Box<Self>) -> SourceStats {
        PerfSource::run(*self)
    }
}

/// Copy the first `n` bytes of `data` into `out`.
fn copy_raw(data: RawData<'_>, n: usize, out: &mut Vec<u8>) {
    match data {
        RawData::Single(a) => out.extend_from_slice(&a[..n.min(a.len())]),
        RawData::Split(a, b) => {
            let from_a = n.min(a.len());
            out.extend_from_slice(&a[..from_a]);
            out.extend_from_slice(&b[..(n - from_a).min(b.len())]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampler_wakes_every_few_ticks_within_bounds_or_often_when_asked() {
        let ms = |hz: u64, python| wake_interval(1_000_000_000 / hz, python) / 1_000_000;
        assert_eq!(ms(1000, false), 10);
        assert_eq!(ms(200, false), 25);
        assert_eq!(ms(100, false), 50);
        assert_eq!(ms(10, false), 50);
        assert_eq!(ms(100, true), 10);
        assert_eq!(ms(10_000, false), 10);
    }

    #[test]
    fn rings_are_larger_on_small_machines_and_never_under_the_default() {
        let sizes = |cpus| ring_pages(cpus).collect::<Vec<_>>();
        assert_eq!(sizes(2), [512, 256, 128, 64, 32, 16]);
        assert_eq!(sizes(4), [256, 128, 64, 32, 16]);
        // Many CPUs: 512 KiB each, what an unprivileged user may lock anyway.
        assert_eq!(sizes(64), [128, 64, 32, 16]);
        assert_eq!(sizes(0), sizes(1));
    }

    #[test]
    fn raw_data_copied_across_the_wrap() {
        let mut out = Vec::new();
        copy_raw(RawData::Split(&[1, 2, 3], &[4, 5, 6]), 5, &mut out);
        assert_eq!(out, [1, 2, 3, 4, 5]);
        out.clear();
        copy_raw(RawData::Single(&[1, 2, 3]), 2, &mut out);
        assert_eq!(out, [1, 2]);
    }
}
