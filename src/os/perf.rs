//! `perf_event_open`: software sampling events on the target's threads, their ring buffers
//! mapped into the agent, and what the kernel's refusals mean. The kernel takes each sample
//! itself (registers and a copy of the top of the user stack) without stopping the thread;
//! the agent only reads the ring buffers. Records are decoded by `linux-perf-event-reader`
//! from the bytes handed out here; nothing in this module interprets samples.
//!
//! Events are opened per thread and CPU (`pid = tid`, `cpu = c`) with `inherit`, so threads
//! the target creates later are sampled too, and every event of one CPU writes into that
//! CPU's ring buffer (`PERF_EVENT_IOC_SET_OUTPUT`), as `perf record -p` does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use linux_perf_event_reader::{
    Endianness, PerfEventAttr, RawData, RawEventRecord, RecordParseInfo, RecordType,
};
use nix::errno::Errno;
use perf_event_open_sys as sys;
use sys::bindings as b;

use crate::types::{Regs, Tid};

/// The user registers asked for, as perf numbers them on x86_64: ax bx cx dx si di bp sp
/// ip (bits 0-8) and r8-r15 (bits 16-23). Flags and segment registers are not needed (and
/// ds/es/fs/gs are refused on x86_64).
pub const REGS_MASK: u64 = 0x1ff | (0xff << 16);

/// DWARF register number of each perf register in `REGS_MASK`, in perf's order (the order
/// of the values in a sample).
const PERF_TO_DWARF: [(u64, u16); 17] = [
    (0, 0),   // ax
    (1, 3),   // bx
    (2, 2),   // cx
    (3, 1),   // dx
    (4, 4),   // si
    (5, 5),   // di
    (6, 6),   // bp
    (7, 7),   // sp
    (8, 16),  // ip
    (16, 8),  // r8
    (17, 9),  // r9
    (18, 10), // r10
    (19, 11), // r11
    (20, 12), // r12
    (21, 13), // r13
    (22, 14), // r14
    (23, 15), // r15
];

/// The registers of a sample, from a lookup by perf register number.
pub fn regs_from_perf(get: impl Fn(u64) -> Option<u64>) -> Regs {
    let mut r = Regs::default();
    for (perf, dwarf) in PERF_TO_DWARF {
        r.set(dwarf, get(perf).unwrap_or(0));
    }
    r
}

/// Which event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `cpu-clock`: a sample every `period_ns` of the thread's CPU time.
    CpuClock {
        /// Nanoseconds of CPU time between samples.
        period_ns: u64,
    },
    /// `context-switches`, every one: a sample each time the thread is switched out,
    /// with its user registers and stack as it blocked or was preempted.
    ContextSwitches,
}

/// What to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSpec {
    /// The event.
    pub kind: EventKind,
    /// Bytes of user stack the kernel copies into each sample (a multiple of 8, < 64 KiB).
    pub stack_bytes: u32,
    /// Count only while the thread runs user code. Needed without `CAP_PERFMON` when
    /// `perf_event_paranoid` is 2; then a tick that finds the thread in the kernel takes
    /// no sample, and context-switch samples cannot be taken at all.
    pub exclude_kernel: bool,
    /// Also report thread creation and exit, name changes and context switches (records
    /// without a stack) on this event.
    pub side_band: bool,
}

impl EventSpec {
    fn attr(&self) -> b::perf_event_attr {
        let mut a = b::perf_event_attr {
            size: std::mem::size_of::<b::perf_event_attr>() as u32,
            type_: b::PERF_TYPE_SOFTWARE,
            ..Default::default()
        };
        match self.kind {
            EventKind::CpuClock { period_ns } => {
                a.config = b::PERF_COUNT_SW_CPU_CLOCK as u64;
                a.__bindgen_anon_1.sample_period = period_ns.max(1);
            }
            EventKind::ContextSwitches => {
                a.config = b::PERF_COUNT_SW_CONTEXT_SWITCHES as u64;
                a.__bindgen_anon_1.sample_period = 1;
            }
        }
        a.sample_type = (b::PERF_SAMPLE_IDENTIFIER
            | b::PERF_SAMPLE_TID
            | b::PERF_SAMPLE_TIME
            | b::PERF_SAMPLE_REGS_USER
            | b::PERF_SAMPLE_STACK_USER) as u64;
        a.sample_regs_user = REGS_MASK;
        a.sample_stack_user = self.stack_bytes & !7;
        a.set_inherit(1);
        a.set_exclude_kernel(self.exclude_kernel as u64);
        a.set_exclude_hv(1);
        a.set_sample_id_all(1);
        a.set_use_clockid(1);
        a.clockid = libc::CLOCK_MONOTONIC;
        if self.side_band {
            a.set_task(1);
            a.set_comm(1);
            a.set_comm_exec(1);
            a.set_context_switch(1);
            // Executable mappings as they are made, in order with the samples: a library
            // loaded where another was is known before the samples that ran it.
            a.set_mmap(1);
            a.set_mmap2(1);
        }
        a
    }

    /// How records of this event are laid out, for `linux-perf-event-reader`. Every event
    /// the agent opens has the same layout, so one ring buffer has one.
    pub fn parse_info(&self) -> RecordParseInfo {
        let a = self.attr();
        // SAFETY: `a` is a plain C struct without padding holes that matter here (bindgen
        // layout, every byte initialised by `Default` and the stores above); the slice
        // lives only while `a` does.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&a as *const b::perf_event_attr).cast::<u8>(),
                std::mem::size_of::<b::perf_event_attr>(),
            )
        };
        let (attr, _) = PerfEventAttr::parse::<_, byteorder::LittleEndian>(bytes)
            .expect("the attr the agent builds parses");
        RecordParseInfo::new(&attr, Endianness::LittleEndian)
    }
}

/// One open event of one thread on one CPU. Closed when dropped.
#[derive(Debug)]
pub struct PerfEvent {
    fd: OwnedFd,
    /// The kernel's id of the event (samples carry it, `PERF_SAMPLE_IDENTIFIER`);
    /// events inherited by later threads report their parent's id.
    pub id: u64,
}

impl PerfEvent {
    /// Open `spec` on thread `tid` for CPU `cpu`, enabled at once. Threads it creates
    /// inherit the event; processes it forks do not, where the kernel can tell them apart
    /// (`inherit_thread`, Linux 5.13).
    pub fn open(spec: &EventSpec, tid: Tid, cpu: i32) -> Result<PerfEvent, Errno> {
        static NO_INHERIT_THREAD: AtomicBool = AtomicBool::new(false);
        let fd = loop {
            let mut attr = spec.attr();
            let thread_only = !NO_INHERIT_THREAD.load(Ordering::Relaxed);
            attr.set_inherit_thread(thread_only as u64);
            // SAFETY: `attr` is a fully initialised perf_event_attr with `size` set; the
            // kernel only reads it (and may write `size` back on E2BIG). Group fd -1: none.
            let fd = unsafe {
                sys::perf_event_open(
                    &mut attr,
                    tid,
                    cpu,
                    -1,
                    b::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
                )
            };
            if fd >= 0 {
                break fd;
            }
            let e = Errno::last();
            if e == Errno::EINVAL && thread_only {
                // An older kernel: inherit into forked processes too (their samples are
                // left out by pid).
                NO_INHERIT_THREAD.store(true, Ordering::Relaxed);
                continue;
            }
            return Err(e);
        };
        // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut id = 0u64;
        // SAFETY: PERF_EVENT_IOC_ID writes one u64 through the pointer, which is valid.
        if unsafe { sys::ioctls::ID(fd.as_raw_fd(), &mut id) } < 0 {
            return Err(Errno::last());
        }
        Ok(PerfEvent { fd, id })
    }

    /// Send this event's records to `ring`'s buffer (same CPU required).
    pub fn output_to(&self, ring: &RingBuffer) -> Result<(), Errno> {
        // SAFETY: SET_OUTPUT takes another perf event fd as its argument; both are open.
        let r = unsafe { sys::ioctls::SET_OUTPUT(self.fd.as_raw_fd(), ring.event.fd.as_raw_fd()) };
        if r < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    /// Stop counting (and sampling), for this event and the ones later threads inherited.
    pub fn disable(&self) {
        // SAFETY: DISABLE takes an integer flag argument; the fd is open.
        unsafe {
            sys::ioctls::DISABLE(self.fd.as_raw_fd(), 0);
        }
    }
}

/// The ring buffer of one CPU: a meta page and 2^n data pages mapped from an event, read
/// by the agent and advanced by its `data_tail`. Unmapped when dropped.
pub struct RingBuffer {
    event: PerfEvent,
    base: *mut u8,
    map_len: usize,
    data_offset: usize,
    data_size: usize,
    parse_info: RecordParseInfo,
}

// SAFETY: the mapping is owned by this value alone and only touched through `&mut self`.
unsafe impl Send for RingBuffer {}

impl RingBuffer {
    /// Map a buffer of `data_pages` pages (a power of two) for `event`; later events of
    /// the same CPU can send their records to it with [`PerfEvent::output_to`].
    pub fn new(event: PerfEvent, data_pages: usize, spec: &EventSpec) -> Result<Self, Errno> {
        let page = page_size();
        let data_size = data_pages * page;
        let map_len = page + data_size;
        // SAFETY: a shared read-write mapping of a perf event fd, as perf_event_open(2)
        // documents; the kernel validates the length (1 + 2^n pages).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                event.fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        Ok(RingBuffer {
            event,
            base: base.cast(),
            map_len,
            data_offset: page,
            data_size,
            parse_info: spec.parse_info(),
        })
    }

    /// The event whose fd the buffer is mapped from.
    pub fn event(&self) -> &PerfEvent {
        &self.event
    }

    fn head_tail(&self) -> (&AtomicU64, &AtomicU64) {
        let meta = self.base.cast::<b::perf_event_mmap_page>();
        // SAFETY: the meta page is mapped for the life of `self`; data_head and data_tail
        // are naturally aligned u64 fields the kernel and the agent share, and are only
        // accessed atomically here (acquire for head, release for tail, as the ABI asks).
        unsafe {
            (
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*meta).data_head)),
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*meta).data_tail)),
            )
        }
    }

    /// Hand every record written since the last call to `f`, then give their space back
    /// to the kernel.
    pub fn drain(&mut self, mut f: impl FnMut(RawEventRecord<'_>)) {
        let (head_a, tail_a) = self.head_tail();
        let head = head_a.load(Ordering::Acquire);
        let mut tail = tail_a.load(Ordering::Relaxed);
        // SAFETY: the data area is mapped for the life of `self`, and the bytes between
        // tail and head were written completely by the kernel before it published head
        // (acquire above); it does not touch them until data_tail moves past them.
        let data =
            unsafe { std::slice::from_raw_parts(self.base.add(self.data_offset), self.data_size) };
        while tail < head {
            let at = (tail % self.data_size as u64) as usize;
            let mut h = [0u8; 8];
            copy_wrapped(data, at, &mut h);
            let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let misc = u16::from_le_bytes([h[4], h[5]]);
            let size = u16::from_le_bytes([h[6], h[7]]) as u64;
            if size < 8 || tail + size > head {
                // A corrupt header: give the rest back rather than loop.
                tail = head;
                break;
            }
            let body_at = (at + 8) % self.data_size;
            let body_len = size as usize - 8;
            let raw = if body_at + body_len <= self.data_size {
                RawData::Single(&data[body_at..body_at + body_len])
            } else {
                let first = self.data_size - body_at;
                RawData::Split(&data[body_at..], &data[..body_len - first])
            };
            if !RecordType(kind).is_user_type() {
                f(RawEventRecord::new(
                    RecordType(kind),
                    misc,
                    raw,
                    self.parse_info,
                ));
            }
            tail += size;
        }
        tail_a.store(tail, Ordering::Release);
    }
}

fn copy_wrapped(data: &[u8], at: usize, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = data[(at + i) % data.len()];
    }
}

impl Drop for RingBuffer {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` are exactly what mmap returned; nothing borrows the
        // mapping past `drain`.
        unsafe {
            libc::munmap(self.base.cast(), self.map_len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

/// `/proc/sys/kernel/perf_event_paranoid`, or None when the kernel has no perf events.
pub fn paranoid() -> Option<i32> {
    super::proc::read_small("/proc/sys/kernel/perf_event_paranoid")?
        .parse()
        .ok()
}

/// The CPUs online now, from a list such as `0-3,6,8-9` (`/sys/devices/system/cpu/online`).
pub fn parse_cpu_list(text: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<i32>(), b.trim().parse::<i32>())
            && a <= b
            && b - a < 65_536
        {
            out.extend(a..=b);
        }
    }
    out
}

/// The CPUs online now.
pub fn online_cpus() -> Vec<i32> {
    let cpus = super::proc::read_small("/sys/devices/system/cpu/online")
        .map(|t| parse_cpu_list(&t))
        .unwrap_or_default();
    if cpus.is_empty() {
        // SAFETY: sysconf has no memory effects.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1);
        (0..n as i32).collect()
    } else {
        cpus
    }
}

/// What the kernel lets the agent do with perf events on a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Samples in user and kernel mode, and context-switch samples.
    Full,
    /// User-mode samples only (`perf_event_paranoid` 2 without `CAP_PERFMON`).
    UserOnly,
    /// Nothing: the reason, in words.
    Refused(String),
}

/// Try the events the perf source opens on `pid` (then close them).
pub fn probe(pid: Tid) -> Probe {
    let cpu = online_cpus()[0];
    let mut spec = EventSpec {
        kind: EventKind::CpuClock {
            period_ns: 10_000_000,
        },
        stack_bytes: 4096,
        exclude_kernel: false,
        side_band: true,
    };
    let refused = |e: Errno| {
        let me = super::permissions::Privileges::current();
        Probe::Refused(explain(
            e,
            paranoid(),
            me.seccomp,
            me.cap_eff & (1 << 38) != 0,
        ))
    };
    match PerfEvent::open(&spec, pid, cpu) {
        Ok(_) => {
            spec.kind = EventKind::ContextSwitches;
            spec.side_band = false;
            match PerfEvent::open(&spec, pid, cpu) {
                Ok(_) => Probe::Full,
                Err(_) => Probe::UserOnly,
            }
        }
        Err(Errno::EACCES | Errno::EPERM) => {
            spec.exclude_kernel = true;
            match PerfEvent::open(&spec, pid, cpu) {
                Ok(_) => Probe::UserOnly,
                Err(e) => refused(e),
            }
        }
        Err(e) => refused(e),
    }
}

/// Why the kernel refused `perf_event_open`, in words a user can act on.
pub fn explain(errno: Errno, paranoid: Option<i32>, seccomp: u32, has_perfmon: bool) -> String {
    match errno {
        Errno::ENOENT | Errno::ENODEV | Errno::EOPNOTSUPP if paranoid.is_none() => {
            "the kernel has no perf events (CONFIG_PERF_EVENTS)".into()
        }
        Errno::ENOSYS if seccomp == 2 => {
            "a seccomp filter refuses perf_event_open (Docker's default profile does; run with \
             a profile that allows it)"
                .into()
        }
        Errno::ENOSYS => "the kernel has no perf_event_open".into(),
        Errno::EACCES | Errno::EPERM => {
            if seccomp == 2 && has_perfmon {
                return "a seccomp filter refuses perf_event_open (Docker's default profile \
                        does; run with a profile that allows it)"
                    .into();
            }
            match paranoid {
                Some(p) if p > 2 => format!(
                    "kernel.perf_event_paranoid is {p}: perf events are for CAP_PERFMON only \
                     (grant it: `sudo setcap cap_perfmon,cap_sys_ptrace+ep $(which profiler)`, \
                     or `sudo sysctl kernel.perf_event_paranoid=2`)"
                ),
                Some(p) => format!(
                    "not permitted (kernel.perf_event_paranoid {p}, no CAP_PERFMON): a process \
                     of another user, or a seccomp filter{}",
                    if seccomp == 2 { " (one is active)" } else { "" }
                ),
                None => "not permitted".into(),
            }
        }
        Errno::EMFILE | Errno::ENFILE => {
            "too many open files (one event per thread and CPU)".into()
        }
        Errno::ESRCH => "the thread exited".into(),
        e => format!("perf_event_open failed: {}", e.desc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6,8-9\n"), vec![0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(parse_cpu_list("0"), vec![0]);
        assert_eq!(parse_cpu_list(""), Vec::<i32>::new());
        assert_eq!(parse_cpu_list("3-1,x"), Vec::<i32>::new());
    }

    #[test]
    fn registers_in_dwarf_order() {
        // perf's value for register n is n + 100: each lands in its DWARF slot.
        let r = regs_from_perf(|n| Some(n + 100));
        assert_eq!(r.ip(), 108);
        assert_eq!(r.sp(), 107);
        assert_eq!(r.bp(), 106);
        assert_eq!(r.get(3), Some(101), "rbx");
        assert_eq!(r.get(1), Some(103), "rdx");
        assert_eq!(r.get(8), Some(116), "r8");
        assert_eq!(r.get(15), Some(123), "r15");
    }

    #[test]
    fn explanations_name_the_cause() {
        let m = explain(Errno::EACCES, Some(3), 0, false);
        assert!(m.contains("perf_event_paranoid is 3"), "{m}");
        let m = explain(Errno::EPERM, Some(2), 2, true);
        assert!(m.contains("seccomp"), "{m}");
        let m = explain(Errno::ENOSYS, Some(2), 2, false);
        assert!(m.contains("seccomp"), "{m}");
    }

    /// Sample this test's own thread while it spins: records arrive with its tid, its
    /// registers and a copy of its stack that holds the stack pointer's bytes.
    #[test]
    fn samples_own_thread() {
        let tid = nix::unistd::gettid().as_raw();
        let spec = EventSpec {
            kind: EventKind::CpuClock { period_ns: 100_000 },
            stack_bytes: 4096,
            exclude_kernel: true,
            side_band: false,
        };
        let cpus = online_cpus();
        let mut rings = Vec::new();
        for &cpu in &cpus {
            match PerfEvent::open(&spec, tid, cpu) {
                Ok(e) => match RingBuffer::new(e, 16, &spec) {
                    Ok(r) => rings.push(r),
                    Err(e) => panic!("mmap: {e}"),
                },
                Err(e) => {
                    eprintln!("perf events not permitted here ({e}); skipping");
                    return;
                }
            }
        }
        let t0 = std::time::Instant::now();
        let mut x = 1u64;
        while t0.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        for r in &rings {
            r.event().disable();
        }
        let mut samples = 0;
        for r in &mut rings {
            r.drain(|rec| {
                if rec.record_type != RecordType::SAMPLE {
                    return;
                }
                let linux_perf_event_reader::EventRecord::Sample(s) = rec.parse().unwrap() else {
                    panic!("a sample record")
                };
                assert_eq!(s.tid, Some(tid));
                let regs = regs_from_perf(|n| s.user_regs.as_ref()?.get(n));
                let (stack, dyn_size) = s.user_stack.unwrap();
                assert!(dyn_size > 0 && dyn_size <= 4096);
                assert!(stack.len() >= dyn_size as usize);
                assert!(regs.sp() != 0 && regs.ip() != 0);
                samples += 1;
            });
        }
        assert!(samples >= 10, "{samples} samples in 30 ms at 10 kHz");
    }
}
