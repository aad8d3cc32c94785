#!/usr/bin/env python3
"""Benchmarks of `profiler attach` against the fixtures, and against `perf record`.

What it measures (see docs/benchmarks.md for the method and the latest numbers):

* Per fixture and configuration (unprofiled; `profiler attach` at 100 and 1000 Hz;
  `perf record -e cpu-clock --call-graph dwarf` at the same rates): the wall time of a
  fixed amount of work (the fixture's `done <seconds>` line), the achieved sampling rate,
  the share of stacks that reach their root, the attribution error (total variation
  distance against the fixture's known shares), the profiler's CPU seconds per second of
  target time, its peak RSS, the per-sample pause of the target thread (from the agent's
  own summary) and the time from starting the agent to its first unwound sample.
  Repetitions are interleaved (every configuration once, in a rotating order, then again)
  and the table shows medians.
* An oversubscribed scenario (more spinning processes than CPUs): attribution error and
  share of samples in system calls, with the sampler at a real-time priority (the agent's
  default) and without (`--no-realtime`), against perf on the same machine.
* Attach to first sample for a target carrying hundreds of MiB of DWARF.
* The criterion micro-benchmarks (`cargo bench --bench unwind --bench symbolize`),
  read back from `target/criterion/*/new/*.json`.

Only the standard library. Linux only (ptrace, /proc, os.wait4).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "bin"
# cargo's target directory: CARGO_TARGET_DIR when set (relative to the repository), as for cargo.
TARGET = ROOT / os.environ.get("CARGO_TARGET_DIR", "target")
PROFILER = TARGET / "release" / "profiler"

# Outermost frames that mean "the walk reached the thread's root" in perf's output.
PERF_ROOTS = {"_start", "clone", "clone3", "__clone", "__clone3", "__GI___clone", "__GI___clone3"}
# Longest a profiler may take to finish after its target (then it is killed).
RUN_TIMEOUT = 120.0
# The agent's markers for stacks that did not reach their root.
OUR_MARKERS = ("[truncated]", "[unknown]", "[max depth]")


# --------------------------------------------------------------------------------------
# Samples and metrics (pure functions over plain data)
# --------------------------------------------------------------------------------------


@dataclass
class Stack:
    """One distinct stack: thread name, frames root first (leaf last), sample count."""

    thread: str
    frames: list[str]
    count: int


def parse_folded(text: str) -> list[Stack]:
    """Folded lines `thread;root;...;leaf count` (the agent's `*.folded` output)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        body, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        parts = body.split(";")
        out.append(Stack(parts[0], parts[1:], n))
    return out


def parse_perf_script(text: str) -> list[Stack]:
    """`perf script -F comm,tid,ip,sym` output: a header line `comm tid` per sample, then
    one indented line `addr symbol [(inlined)]` per frame, leaf first; blank line after."""
    out: list[Stack] = []
    thread: Optional[str] = None
    frames: list[str] = []

    def flush():
        if thread is not None:
            out.append(Stack(thread, list(reversed(frames)), 1))

    for line in text.splitlines():
        if not line.strip():
            flush()
            thread, frames = None, []
            continue
        if not line[0].isspace():
            flush()
            # comm may contain spaces; the tid is the last field.
            head = line.rstrip().rsplit(None, 1)
            thread, frames = (head[0] if len(head) == 2 else line.strip()), []
            continue
        parts = line.strip().split(None, 1)
        sym = parts[1] if len(parts) > 1 else "[unknown]"
        if sym.endswith(" (inlined)"):
            sym = sym[: -len(" (inlined)")]
        # perf prints "sym+0xoff" with -F sym,symoff; without symoff there is none. Drop
        # the module in parentheses if present.
        sym = re.sub(r" \(.*\)$", "", sym)
        frames.append(sym)
    flush()
    return out


def total(stacks: list[Stack]) -> int:
    return sum(s.count for s in stacks)


def perf_root_share(stacks: list[Stack]) -> Optional[float]:
    """Share of perf samples whose outermost frame is a thread root."""
    n = total(stacks)
    if n == 0:
        return None
    ok = sum(s.count for s in stacks if s.frames and s.frames[0] in PERF_ROOTS)
    return ok / n


def our_root_share(stacks: list[Stack]) -> Optional[float]:
    """Share of the agent's samples without an incomplete-stack marker at the root end."""
    n = total(stacks)
    if n == 0:
        return None
    bad = sum(s.count for s in stacks if s.frames and s.frames[0].startswith(OUR_MARKERS))
    return 1.0 - bad / n


def tvd(p: dict[str, float], q: dict[str, float]) -> float:
    """Total variation distance between two distributions over the same keys."""
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


@dataclass
class Shares:
    """Known split of samples between functions (a sample counts for the first function
    of `shares` found in its stack; samples in none of them are left out)."""

    shares: dict[str, float]

    def error(self, stacks: list[Stack]) -> Optional[float]:
        counts = {k: 0 for k in self.shares}
        for s in stacks:
            for k in self.shares:
                if k in s.frames:
                    counts[k] += s.count
                    break
        n = sum(counts.values())
        if n == 0:
            return None
        return tvd({k: c / n for k, c in counts.items()}, self.shares)

    def describe(self) -> str:
        return "/".join(f"{round(v * 100)}" for v in self.shares.values()) + " split of " + ", ".join(self.shares)


@dataclass
class Expect:
    """Every sample of a thread whose name starts with a key has a frame containing the
    value: the truth puts all mass there, so the error is the share of those threads'
    samples without it."""

    expect: dict[str, str]

    def error(self, stacks: list[Stack]) -> Optional[float]:
        n = bad = 0
        for s in stacks:
            for prefix, func in self.expect.items():
                if s.thread.startswith(prefix):
                    n += s.count
                    if not any(func in f for f in s.frames):
                        bad += s.count
                    break
        return bad / n if n else None

    def describe(self) -> str:
        return "; ".join(f"`{t}*` in `{f}`" for t, f in self.expect.items())


@dataclass
class ExactStack:
    """Every sample of a thread has exactly `count` frames named `frame` and ends in
    `leaf`: the error is the share of samples whose stack differs."""

    thread: str
    frame: str
    count: int
    leaf: str

    def error(self, stacks: list[Stack]) -> Optional[float]:
        mine = [s for s in stacks if s.thread == self.thread]
        n = total(mine)
        if n == 0:
            return None
        good = sum(
            s.count
            for s in mine
            if s.frames and s.frames[-1] == self.leaf and s.frames.count(self.frame) == self.count
        )
        return 1.0 - good / n

    def describe(self) -> str:
        return f"`main` + {self.count} x `{self.frame}` + `{self.leaf}`"


def share_with(stacks: list[Stack], needles: tuple[str, ...]) -> Optional[float]:
    """Share of samples with a frame containing any of `needles`."""
    n = total(stacks)
    if n == 0 or not needles:
        return None
    hit = sum(s.count for s in stacks if any(any(x in f for x in needles) for f in s.frames))
    return hit / n


def median(xs: list[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------


@dataclass
class Usage:
    """What os.wait4 reports about a child."""

    status: int
    cpu: float
    maxrss_kib: int
    wall: float


def wait_usage(pid: int, started: float, timeout: Optional[float] = None, group: bool = False) -> Usage:
    """Reap `pid` with its resource usage; after `timeout` seconds, kill it (its process
    group when `group`) first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        got, status, ru = os.wait4(pid, 0 if deadline is None else os.WNOHANG)
        if got == pid:
            return Usage(status, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, time.monotonic() - started)
        if time.monotonic() > deadline:
            try:
                (os.killpg if group else os.kill)(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = None
        else:
            time.sleep(0.005)


# GNU time, to measure a profiler's peak RSS: `ru_maxrss` of a child of this (large)
# Python process also counts the parent's memory, which the kernel carries into the child
# at fork and keeps across exec. A child of the small `time` process starts from its size.
GNU_TIME = shutil.which("time", path="/usr/bin:/bin")


class Measured:
    """A profiler process (ours or `perf record`) whose CPU time and peak RSS are measured:
    under GNU time when available, else by wait4 (then the RSS is an upper bound)."""

    def __init__(self, argv: list[str], stderr, tmp: Path):
        self.usage_file = tmp / "usage.txt"
        self.usage_file.unlink(missing_ok=True)
        cmd = [GNU_TIME, "-f", "%U %S %M", "-o", str(self.usage_file), *argv] if GNU_TIME else argv
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=stderr, start_new_session=True)
        self.pid = self.proc.pid
        self.returncode: Optional[int] = None

    def wait(self, timeout: Optional[float] = None) -> Usage:
        u = wait_usage(self.pid, self.started, timeout, group=True)
        self.returncode = self.proc.returncode = os.waitstatus_to_exitcode(u.status)
        if GNU_TIME:
            try:
                last = self.usage_file.read_text().strip().splitlines()[-1].split()
                u.cpu, u.maxrss_kib = float(last[0]) + float(last[1]), int(last[2])
            except (OSError, IndexError, ValueError):
                pass
        return u


class Fixture:
    """A running fixture: stdout parsed line by line (`ready <pid>`, `done <s>`)."""

    def __init__(self, binary: str, args: list[str]):
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(FIXTURES / binary), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.kill()
            raise RuntimeError(f"{binary}: expected `ready <pid>`, got {line!r}")
        self.pid = self.proc.pid
        self.done: Optional[float] = None
        self.usage: Optional[Usage] = None

    def wait(self) -> Usage:
        for line in self.proc.stdout:
            if line.startswith("done "):
                self.done = float(line.split()[1])
        self.usage = wait_usage(self.pid, self.started)
        self.proc.returncode = os.waitstatus_to_exitcode(self.usage.status)
        return self.usage

    def kill(self):
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except Exception:
            pass


def still_running(pid: int) -> bool:
    """True while child `pid` has not exited (it is not reaped either way)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def trigger_traced(pid: int) -> int:
    """Start a `--wait-traced` fixture without profiling it by us: a forked helper seizes
    the target's main thread with ptrace (which stops nothing) and stays its tracer until it
    exits, passing every signal on, so the fixture sees `TracerPid` however long it takes
    to be scheduled. Returns the helper's pid (reap it after the fixture)."""
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(ready_r)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
            libc.ptrace.restype = ctypes.c_long
            PTRACE_CONT, PTRACE_SEIZE, PTRACE_LISTEN = 7, 0x4206, 0x4208
            PTRACE_EVENT_STOP = 128
            WALL = 0x40000000
            if libc.ptrace(PTRACE_SEIZE, pid, None, None) == 0:
                os.write(ready_w, b"1")
                os.close(ready_w)
                while True:
                    _, status = os.waitpid(pid, WALL)
                    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                        break
                    if os.WIFSTOPPED(status):
                        if status >> 16 == PTRACE_EVENT_STOP:
                            libc.ptrace(PTRACE_LISTEN, pid, None, None)  # a group-stop: keep it
                        else:
                            libc.ptrace(PTRACE_CONT, pid, None, ctypes.c_void_p(os.WSTOPSIG(status)))
                code = 0
        except BaseException:
            pass
        finally:
            os._exit(code)
    os.close(ready_w)
    ok = os.read(ready_r, 1)
    os.close(ready_r)
    if not ok:
        os.waitpid(child, 0)
        raise RuntimeError(f"could not ptrace-seize {pid} to start its work")
    return child


def enable_perf(ctl: Path, ack: Path, perf_pid: int, timeout: float = 30.0) -> bool:
    """Enable a `perf record -D -1 --control fifo:CTL,ACK` and wait for its ack, so the
    events are known to count before the work starts. False when perf exited first or
    did not answer in time."""
    deadline = time.monotonic() + timeout
    wfd = None
    while wfd is None:
        try:
            wfd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until perf reads it
        except OSError:
            if time.monotonic() > deadline or not still_running(perf_pid):
                return False
            time.sleep(0.01)
    rfd = os.open(ack, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.write(wfd, b"enable\n")
        got = b""
        while b"ack" not in got:
            try:
                got += os.read(rfd, 64)
            except BlockingIOError:
                pass
            if b"ack" in got:
                break
            if time.monotonic() > deadline or not still_running(perf_pid):
                return False
            time.sleep(0.005)
        return True
    finally:
        os.close(wfd)
        os.close(rfd)


def wait_for_line(path: Path, needle: str, pid: int, timeout: float = 30.0) -> bool:
    """Wait until the file at `path` holds `needle` (False when process `pid` exited or
    the time ran out first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if needle in path.read_text(errors="replace"):
                return True
        except OSError:
            pass
        if not still_running(pid):
            return False
        time.sleep(0.005)
    return False


def perf_works(tmp: Path) -> tuple[bool, str]:
    """Whether `perf record -e cpu-clock --call-graph dwarf` works here."""
    if not shutil.which("perf"):
        return False, "perf is not installed"
    out = tmp / "probe.data"
    r = subprocess.run(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "1000", "--call-graph", "dwarf",
         "-o", str(out), "--", "true"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    if r.returncode != 0:
        return False, "perf record failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    h = subprocess.run(["perf", "record", "-h"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if "--control" not in h.stdout:
        return False, "this perf has no `record --control` (perf 5.10 or later needed)"
    return True, ""


# --------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------


PTRACE = ("--sampler", "ptrace")
PERF_SOURCE = ("--sampler", "perf")


@dataclass
class Config:
    """A way to run a fixture: tool `none`, `ours` or `perf`, at `hz`, with extra agent
    flags."""

    tool: str
    hz: int = 0
    flags: tuple[str, ...] = ()
    label: str = ""

    def sampler(self) -> str:
        """The agent's stack source: `ptrace` or `perf` (its --sampler)."""
        return "perf" if ("--sampler", "perf") in zip(self.flags, self.flags[1:]) else "ptrace"

    def name(self) -> str:
        if self.label:
            return self.label
        if self.tool == "none":
            return "unprofiled"
        if self.tool == "ours":
            return f"profiler {self.sampler()} {self.hz} Hz"
        return f"perf record {self.hz} Hz"


@dataclass
class Result:
    config: Config
    wall: Optional[float] = None  # fixture's `done` seconds, or None
    target_wall: Optional[float] = None  # seconds the target ran (for per-second rates)
    target_cpu: Optional[float] = None
    stacks: list[Stack] = field(default_factory=list)
    rate: Optional[float] = None
    root: Optional[float] = None
    agent_cpu: Optional[float] = None
    agent_rss_kib: Optional[int] = None
    post_cpu: Optional[float] = None  # perf script
    p50: Optional[float] = None
    p99: Optional[float] = None
    first_ms: Optional[float] = None
    realtime: Optional[bool] = None
    skipped: Optional[int] = None  # ticks of the schedule skipped (the sampler was late)
    skipped_share: Optional[float] = None  # skipped / (taken + skipped)
    error: Optional[str] = None


# `rate 922.8 Hz (asked 1000 Hz); ...` or, when the sampler fell behind,
# `rate 922.8 Hz (asked 1000 Hz; 618 ticks skipped: sampler late, <why>); ...`.
SUMMARY_RATE = re.compile(
    r"rate ([\d.]+) Hz \(asked [\d.]+ Hz(?:; (\d+) ticks skipped[^)]*)?\); ([\d.]+)% of stacks reached their root")
SUMMARY_SECONDS = re.compile(r"^profiled .* for ([\d.]+) s:", re.M)
SUMMARY_PAUSE = re.compile(r"target pause per sample: p50 (\d+) µs, p99 (\d+) µs")
SUMMARY_FIRST = re.compile(r"first sample unwound [\d.]+ ms after start \(CLOCK_MONOTONIC ([\d.]+) s\)")
SUMMARY_RT = re.compile(r"realtime (true|false)")


def parse_summary(text: str, res: Result, launched: float):
    """Numbers from the agent's closing summary (stderr)."""
    if m := SUMMARY_RATE.search(text):
        res.rate = float(m.group(1))
        res.skipped = int(m.group(2) or 0)
        res.root = float(m.group(3)) / 100.0
        if s := SUMMARY_SECONDS.search(text):
            scheduled = res.rate * float(s.group(1)) + res.skipped
            res.skipped_share = res.skipped / scheduled if scheduled > 0 else None
    if m := SUMMARY_PAUSE.search(text):
        res.p50, res.p99 = float(m.group(1)), float(m.group(2))
    if m := SUMMARY_FIRST.search(text):
        res.first_ms = (float(m.group(1)) - launched) * 1e3
    if m := SUMMARY_RT.search(text):
        res.realtime = m.group(1) == "true"


def run_once(binary: str, args: list[str], cfg: Config, tmp: Path, seconds: Optional[float]) -> Result:
    """Run `binary args` (which must accept --wait-traced) once under `cfg`."""
    res = Result(cfg)
    fx = Fixture(binary, [*args, "--wait-traced"])
    try:
        if cfg.tool == "none":
            helper = trigger_traced(fx.pid)
            fx.wait()
            os.waitpid(helper, 0)
        elif cfg.tool == "ours":
            folded = tmp / "ours.folded"
            log = tmp / "ours.log"
            folded.unlink(missing_ok=True)
            with open(log, "w") as err:
                launched = time.monotonic()
                agent = Measured(
                    [str(PROFILER), "attach", "--pid", str(fx.pid), "-F", str(cfg.hz),
                     "-o", str(folded), "-v", *cfg.flags], err, tmp)
                helper = None
                if cfg.sampler() == "perf" and wait_for_line(log, "sampler: perf_event_open",
                                                             agent.pid):
                    # The perf source traces nothing: once its events are open, the same
                    # idle tracer as the unprofiled run starts the work.
                    helper = trigger_traced(fx.pid)
                # The agent ends after the target does (or at once, on an error, leaving
                # the target waiting for a tracer).
                u = agent.wait(RUN_TIMEOUT)
                if agent.returncode != 0 and still_running(fx.pid):
                    fx.kill()
                else:
                    fx.wait()
                if helper is not None:
                    os.waitpid(helper, 0)
            text = log.read_text(errors="replace")
            if agent.returncode != 0 or not folded.exists():
                res.error = f"agent exit {agent.returncode}: " + " / ".join(text.strip().splitlines()[-3:])
            else:
                res.stacks = parse_folded(folded.read_text(errors="replace"))
                if not res.stacks:
                    res.error = "no samples: " + " / ".join(text.strip().splitlines()[-3:])
            res.agent_cpu, res.agent_rss_kib = u.cpu, u.maxrss_kib
            parse_summary(text, res, launched)
        elif cfg.tool == "perf":
            data = tmp / "perf.data"
            log = tmp / "perf.log"
            data.unlink(missing_ok=True)
            ctl, ack = tmp / "perf.ctl", tmp / "perf.ack"
            for f in (ctl, ack):
                f.unlink(missing_ok=True)
                os.mkfifo(f)
            with open(log, "w") as err:
                # Started disabled (-D -1) and enabled through the control FIFO once set up.
                perf = Measured(
                    ["perf", "record", "-q", "-D", "-1", "--control", f"fifo:{ctl},{ack}", "-e", "cpu-clock",
                     "-F", str(cfg.hz), "--call-graph", "dwarf", "-p", str(fx.pid), "-o", str(data)], err, tmp)
                ready = enable_perf(ctl, ack, perf.pid)
                helper = trigger_traced(fx.pid)
                fx.wait()
                os.waitpid(helper, 0)
                u = perf.wait(RUN_TIMEOUT)
            res.agent_cpu, res.agent_rss_kib = u.cpu, u.maxrss_kib
            perf_log = log.read_text(errors="replace").strip()
            if not ready:
                res.error = "perf record did not acknowledge `enable`: " + perf_log[-200:]
            elif not data.exists():
                res.error = f"perf record exit {perf.returncode}: {log.read_text(errors='replace').strip()[-200:]}"
            else:
                # Children's CPU only grows when a child is reaped: the delta is perf script's.
                before = os.times()
                script = subprocess.run(
                    ["perf", "script", "-i", str(data), "-F", "comm,tid,ip,sym"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    text=True, errors="replace",
                )
                after = os.times()
                res.post_cpu = (after.children_user + after.children_system) - (
                    before.children_user + before.children_system)
                res.stacks = parse_perf_script(script.stdout)
                res.root = perf_root_share(res.stacks)
                if not res.stacks:
                    res.error = f"no samples (perf record exit {perf.returncode}): " + perf_log[-200:]
        else:
            raise ValueError(cfg.tool)
    finally:
        if fx.usage is None:
            fx.kill()
    res.wall = fx.done
    res.target_cpu = fx.usage.cpu if fx.usage else None
    res.target_wall = fx.done if fx.done is not None else seconds
    if cfg.tool == "perf" and res.target_cpu:
        # perf samples per CPU-second of each thread: the per-thread rate while it runs.
        res.rate = total(res.stacks) / res.target_cpu
    if cfg.tool == "ours" and res.root is None:
        res.root = our_root_share(res.stacks)
    return res


# --------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------


@dataclass
class Scenario:
    title: str
    binary: str
    args: list[str]
    truth: object
    work: bool  # prints `done <s>` after fixed work
    seconds: Optional[float] = None  # for timed fixtures
    syscalls: tuple[str, ...] = ()
    loaded: bool = False  # run beside the hogs (oversubscribed)


def scenarios(quick: bool) -> list[Scenario]:
    rounds = "120" if quick else "200"
    units = "800" if quick else "1500"
    secs = 1.5 if quick else 2.0
    cw = Shares({"worker_direct": 0.5, "worker_recursive": 0.3, "worker_indirect": 0.2})
    busy = Expect({"busy-": "busy_spin"})
    out = [
        Scenario("c_workers (1 thread, CPU-bound)", "c_workers", ["--work", rounds], cw, True),
        Scenario("busy_threads: 2 busy", "busy_threads", ["--busy", "2", "--work", units], busy, True),
        Scenario("busy_threads: 2 busy + 100 idle", "busy_threads",
                 ["--busy", "2", "--idle", "100", "--work", units], busy, True),
    ]
    if not quick:
        out += [
            Scenario("deep_recursion (2000 frames, 2 MiB stack)", "deep_recursion",
                     ["--work", "80000"], ExactStack("deep_recursion", "deep", 2000, "deep_leaf"),
                     True),
            Scenario("cpp_app (3 CPU threads, 50 threads/s churn)", "cpp_app", ["--seconds", str(secs)],
                     Expect({"acc-int": "Accumulator<int>::run", "acc-double": "Accumulator<double>::run",
                             "lambda-worker": "start_lambda_worker"}), False, secs),
            Scenario("rust_app_v0 (3 CPU threads)", "rust_app_v0", ["--seconds", str(secs)],
                     Expect({"rust-crunch-u64": "crunch", "rust-crunch-f64": "crunch"}), False, secs),
        ]
    return out


@dataclass
class Row:
    scenario: Scenario
    config: Config
    results: list[Result]

    def med(self, attr: str) -> Optional[float]:
        return median([getattr(r, attr) for r in self.results if r.error is None])

    def errors(self) -> list[str]:
        return [r.error for r in self.results if r.error]

    def tvd(self) -> Optional[float]:
        return median([self.scenario.truth.error(r.stacks) for r in self.results if r.stacks])

    def syscall_share(self) -> Optional[float]:
        return median([share_with(r.stacks, self.scenario.syscalls) for r in self.results if r.stacks])

    def max_rss_kib(self) -> Optional[int]:
        """The largest peak RSS of any run (the worst case, which budgets are judged on)."""
        xs = [r.agent_rss_kib for r in self.results if r.error is None and r.agent_rss_kib]
        return max(xs) if xs else None

    def skipped_cell(self) -> str:
        """Median share of the schedule's ticks skipped, with the median count: `—` for
        perf and unprofiled runs (no schedule)."""
        share = self.med("skipped_share")
        if share is None:
            return "—"
        return f"{share:.1%} ({self.med('skipped'):.0f})"

    def cpu_per_s(self) -> Optional[float]:
        return median([
            r.agent_cpu / r.target_wall
            for r in self.results
            if r.error is None and r.agent_cpu is not None and r.target_wall
        ])


def run_scenario(sc: Scenario, configs: list[Config], reps: int, tmp: Path, log) -> list[Row]:
    rows = [Row(sc, c, []) for c in configs]
    for rep in range(reps):
        # Rotate the order so no configuration always runs first (or right after another).
        k = rep % len(rows)
        for row in rows[k:] + rows[:k]:
            t0 = time.monotonic()
            try:
                res = run_once(sc.binary, sc.args, row.config, tmp, sc.seconds)
            except Exception as e:  # a failed run is reported, not fatal
                res = Result(row.config, error=str(e))
            row.results.append(res)
            log(f"  {sc.binary} {row.config.name():<28} rep {rep + 1}/{reps}: "
                + (f"wall {res.wall:.3f} s " if res.wall else "")
                + (f"error {res.error}" if res.error else f"{total(res.stacks)} samples")
                + f" ({time.monotonic() - t0:.1f} s)")
    return rows


# --------------------------------------------------------------------------------------
# Oversubscription
# --------------------------------------------------------------------------------------


class Hogs:
    """`n` spinning processes (busy_threads --busy 1) to oversubscribe the CPUs."""

    def __init__(self, n: int):
        self.fx = [Fixture("busy_threads", ["--busy", "1"]) for _ in range(n)]

    def stop(self):
        for f in self.fx:
            f.kill()


def run_oversubscribed(quick: bool, reps: int, have_perf: bool, tmp: Path, log) -> tuple[list[Row], int]:
    secs = 1.5 if quick else 2.0
    sc = Scenario("c_workers, CPU-time slices (clock_gettime syscall every ~64 µs)", "c_workers",
                  ["--seconds", str(secs)],
                  Shares({"worker_direct": 0.5, "worker_recursive": 0.3, "worker_indirect": 0.2}),
                  False, secs, ("clock_gettime",))
    configs = [
        Config("ours", 1000, PTRACE, label="profiler ptrace 1000 Hz (real-time sampler)"),
        Config("ours", 1000, (*PTRACE, "--no-realtime"), label="profiler ptrace 1000 Hz --no-realtime"),
    ]
    if have_perf:
        configs.append(Config("ours", 1000, PERF_SOURCE, label="profiler perf 1000 Hz"))
        configs.append(Config("perf", 1000))
    ncpu = os.cpu_count() or 1
    hogs_n = 2 * ncpu + 2
    out = []
    log(f"oversubscription: quiet, then with {hogs_n} spinning processes on {ncpu} CPUs")
    quiet = run_scenario(Scenario("no hogs", sc.binary, sc.args, sc.truth, False, secs, sc.syscalls),
                         configs, reps, tmp, log)
    out += quiet
    hogs = Hogs(hogs_n)
    try:
        time.sleep(0.3)
        loaded = run_scenario(
            Scenario(f"{hogs_n} hogs on {ncpu} CPUs", sc.binary, sc.args, sc.truth, False,
                     secs, sc.syscalls, loaded=True), configs, reps, tmp, log)
    finally:
        hogs.stop()
    out += loaded
    return out, hogs_n


# --------------------------------------------------------------------------------------
# A target with hundreds of MiB of DWARF
# --------------------------------------------------------------------------------------


BIG_TYPES = 1500  # struct types per unit
BIG_FIELDS = 24  # fields per struct
BIG_FUNCS = 1500  # functions per unit
BIG_COPIES = 400  # renamed copies of the unit linked in: ~300 MiB of DWARF


def big_unit_source() -> str:
    """One C unit with many struct types (emitted into DWARF by -O0 -g and
    -fno-eliminate-unused-debug-types) and many functions with locals and lines."""
    out = ["#include <stdint.h>"]
    for t in range(BIG_TYPES):
        fields = " ".join(f"uint{8 << (f % 4)}_t f{f}_{t}; " for f in range(BIG_FIELDS))
        out.append(f"struct big_type_{t} {{ {fields}}};")
    for i in range(BIG_FUNCS):
        t = i % BIG_TYPES
        out.append(
            f"uint64_t big_fn_{i}(uint64_t x) {{\n"
            f"  struct big_type_{t} v = {{0}};\n"
            f"  uint64_t a = x * {2 * i + 3}u;\n"
            f"  v.f0_{t} = (uint8_t)a;\n"
            f"  for (int k = 0; k < 3; k++) {{\n"
            f"    a ^= a >> {i % 31 + 1};\n"
            f"    a += v.f0_{t} + k;\n"
            f"  }}\n"
            f"  return a;\n}}"
        )
    return "\n".join(out) + "\n"


MAIN_SOURCE = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>
__attribute__((noinline)) uint64_t spin(uint64_t x) {
    for (int i = 0; i < 1000; i++) { x ^= x >> 13; x *= 0x9e3779b97f4a7c15ull; }
    return x;
}
int main(int argc, char **argv) {
    prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
    double secs = argc > 2 && !strcmp(argv[1], "--seconds") ? atof(argv[2]) : 1e9;
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    volatile uint64_t sink = 1;
    for (;;) {
        sink = spin(sink);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 > secs) return 0;
    }
}
"""


def build_big_dwarf(workdir: Path, copies: int, log) -> Optional[Path]:
    """Build (once; cached in `workdir`) a program linking `copies` renamed copies of one
    DWARF-heavy unit: a stand-in for the debug build of a large program."""
    workdir.mkdir(parents=True, exist_ok=True)
    exe = workdir / f"big_dwarf_{BIG_TYPES}t_{BIG_FUNCS}f_{copies}u"
    if exe.exists():
        return exe
    for tool in ("gcc", "objcopy"):
        if not shutil.which(tool):
            log(f"big-DWARF target skipped: {tool} not found")
            return None
    t0 = time.monotonic()
    unit_c = workdir / "big_unit.c"
    unit_c.write_text(big_unit_source())
    unit_o = workdir / "big_unit.o"
    subprocess.run(["gcc", "-O0", "-g", "-fno-eliminate-unused-debug-types", "-c", "-o", str(unit_o),
                    str(unit_c)], check=True)
    objs = []
    for i in range(copies):
        o = workdir / f"big_unit_{i}.o"
        # Renamed symbols; each copy keeps its own compilation unit in .debug_info.
        subprocess.run(["objcopy", f"--prefix-symbols=c{i}_", str(unit_o), str(o)], check=True)
        objs.append(str(o))
    main_c = workdir / "big_main.c"
    main_c.write_text(MAIN_SOURCE)
    subprocess.run(["gcc", "-O1", "-g", "-Wl,--build-id=sha1", "-o", str(exe), str(main_c), *objs],
                   check=True)
    for o in objs:
        os.unlink(o)
    log(f"built {exe} in {time.monotonic() - t0:.1f} s")
    return exe


def dwarf_bytes(exe: Path) -> Optional[int]:
    """Sum of the sizes of the .debug_* sections (readelf -S -W)."""
    try:
        out = subprocess.run(["readelf", "-S", "-W", str(exe)], capture_output=True, text=True).stdout
    except OSError:
        return None
    n = 0
    for line in out.splitlines():
        m = re.search(r"\]\s+(\.debug_\S+)\s+\S+\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)", line)
        if m:
            n += int(m.group(2), 16)
    return n


@dataclass
class AttachResult:
    target: str
    dwarf_mib: Optional[float]
    first_ms: list[float]
    agent_cpu: list[float]
    rss_kib: list[int]
    error: Optional[str] = None


def run_attach_latency(exe: Path, label: str, reps: int, tmp: Path, log) -> AttachResult:
    """Time from starting the agent to its first unwound sample, against `exe`."""
    dw = dwarf_bytes(exe)
    res = AttachResult(label, dw / 2**20 if dw else None, [], [], [])
    for rep in range(reps):
        fx = subprocess.Popen([str(exe), "--seconds", "30"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True)
        try:
            line = fx.stdout.readline()
            if not line.startswith("ready"):
                res.error = f"{exe.name} did not start: {line!r}"
                break
            time.sleep(0.1)
            log_path = tmp / "attach.log"
            with open(log_path, "w") as err:
                launched = time.monotonic()
                agent = Measured(
                    [str(PROFILER), "attach", "--pid", str(fx.pid), "-F", "1000", "--duration", "1",
                     "-o", str(tmp / "attach.folded"), "-v"], err, tmp)
                u = agent.wait(RUN_TIMEOUT)
            text = log_path.read_text(errors="replace")
            r = Result(Config("ours", 1000))
            parse_summary(text, r, launched)
            if r.first_ms is None:
                res.error = "no `first sample` line: " + " / ".join(text.strip().splitlines()[-2:])
                break
            res.first_ms.append(r.first_ms)
            res.agent_cpu.append(u.cpu)
            res.rss_kib.append(u.maxrss_kib)
            log(f"  attach to {label}: first sample after {r.first_ms:.1f} ms, agent CPU {u.cpu:.2f} s, "
                f"RSS {u.maxrss_kib / 1024:.1f} MiB (rep {rep + 1}/{reps})")
        finally:
            fx.kill()
    return res


# --------------------------------------------------------------------------------------
# Criterion micro-benchmarks
# --------------------------------------------------------------------------------------


def run_micro(quick: bool, log) -> tuple[list[tuple[str, float, Optional[str]]], Optional[str]]:
    """Run the criterion benches and read their estimates back. Returns rows
    (benchmark id, median ns per iteration, per-element text) and an error."""
    args = ["cargo", "bench", "--bench", "unwind", "--bench", "symbolize", "--", "--noplot"]
    if quick:
        args += ["--warm-up-time", "0.5", "--measurement-time", "1"]
    log("micro-benchmarks: " + " ".join(args))
    t0 = time.monotonic()
    r = subprocess.run(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, errors="replace")
    log(f"  done in {time.monotonic() - t0:.0f} s")
    if r.returncode != 0:
        return [], "cargo bench failed: " + " / ".join(r.stdout.strip().splitlines()[-5:])
    return read_criterion(TARGET / "criterion"), None


def read_criterion(base: Path) -> list[tuple[str, float, Optional[str]]]:
    rows = []
    for est in sorted(base.glob("**/new/estimates.json")):
        bench = est.parent.parent
        meta_path = est.parent / "benchmark.json"
        try:
            e = json.loads(est.read_text())
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        except (OSError, ValueError):
            continue
        ns = e["median"]["point_estimate"]
        per = None
        thr = meta.get("throughput") or {}
        bench_id = meta.get("full_id") or str(bench.relative_to(base))
        unit = "frame" if bench_id.startswith("unwind/") else "address" if bench_id.startswith("symbolize/") else "element"
        if "Elements" in thr and thr["Elements"]:
            per = f"{ns / thr['Elements']:,.0f} ns per {unit} ({thr['Elements']} {unit}{'es' if unit.endswith('s') else 's'} per iteration)"
        rows.append((bench_id, ns, per))
    return rows


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def fmt(x: Optional[float], spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return "—" if x is None else format(x * scale, spec) + suffix


def main_table(rows: list[Row]) -> list[str]:
    out = [
        "| fixture | configuration | wall s (median) | slowdown | target CPU slowdown | rate Hz | ticks skipped | stacks to root | attribution error (TVD) | profiler CPU s/s | profiler peak RSS MiB (worst run) | pause p50 / p99 µs | first sample ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_sc: dict[str, list[Row]] = {}
    for r in rows:
        by_sc.setdefault(r.scenario.title, []).append(r)
    for title, rs in by_sc.items():
        base = next((r.med("wall") for r in rs if r.config.tool == "none"), None)
        base_cpu = next((r.med("target_cpu") for r in rs if r.config.tool == "none"), None)
        for r in rs:
            wall = r.med("wall")
            slow = None if (wall is None or base is None or r.config.tool == "none") else wall / base - 1
            cpu = r.med("target_cpu")
            slow_cpu = (None if (cpu is None or base_cpu is None or r.config.tool == "none")
                        else cpu / base_cpu - 1)
            pause = "—" if r.med("p50") is None else f"{r.med('p50'):.0f} / {r.med('p99'):.0f}"
            rss = r.max_rss_kib()
            errs = r.errors()
            name = r.config.name() + (f" ({len(errs)} failed: {errs[0][:80]})" if errs else "")
            out.append(
                f"| {title} | {name} | {fmt(wall, '.3f')} | {fmt(slow, '+.1%')} | {fmt(slow_cpu, '+.1%')} "
                f"| {fmt(r.med('rate'), '.0f')} | {r.skipped_cell()} | {fmt(r.med('root'), '.1%')} "
                f"| {fmt(r.tvd(), '.3f')} "
                f"| {fmt(r.cpu_per_s(), '.3f')} | {fmt(rss, '.1f', 1 / 1024)} | {pause} "
                f"| {fmt(r.med('first_ms'), '.1f')} |"
            )
    return out


def over_table(rows: list[Row]) -> list[str]:
    out = [
        "| load | configuration | attribution error (TVD) | samples in clock_gettime | vs truth | rate Hz | ticks skipped | profiler CPU s/s | pause p50 / p99 µs | sampler real-time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    # The truth for the share of samples in the system call: perf's cpu-clock samples (CPU
    # time, kernel included) without hogs.
    truth = next((r.syscall_share() for r in rows if r.config.tool == "perf" and not r.scenario.loaded
                  and r.syscall_share() is not None), None)
    for r in rows:
        load = r.scenario.title
        pause = "—" if r.med("p50") is None else f"{r.med('p50'):.0f} / {r.med('p99'):.0f}"
        rt = {True: "yes", False: "no"}.get(
            None if not r.results or r.results[0].realtime is None else r.results[0].realtime, "—")
        errs = r.errors()
        name = r.config.name() + (f" ({len(errs)} failed: {errs[0][:80]})" if errs else "")
        out.append(
            f"| {load} | {name} | {fmt(r.tvd(), '.3f')} | {fmt(r.syscall_share(), '.1%')} "
            f"| {fmt(None if truth is None or r.syscall_share() is None else r.syscall_share() - truth, '+.1%')} "
            f"| {fmt(r.med('rate'), '.0f')} | {r.skipped_cell()} | {fmt(r.cpu_per_s(), '.3f')} | {pause} | {rt} |"
        )
    return out


def budgets(rows: list[Row], over: list[Row], attach: list[AttachResult], quiet: bool) -> list[str]:
    def find(rs, title_start, cfg_name):
        return next((r for r in rs if r.scenario.title.startswith(title_start) and r.config.name() == cfg_name), None)

    out = ["| budget | measured | met |", "|---|---|---|"]

    def line(budget, measured, ok):
        out.append(f"| {budget} | {measured} | {'—' if ok is None else ('yes' if ok else '**no**')} |")

    base = find(rows, "c_workers", "unprofiled")
    for hz, limit in ((100, 0.01), (1000, 0.04)):
        r = find(rows, "c_workers", f"profiler ptrace {hz} Hz")
        if base and r and base.med("wall") and r.med("wall"):
            s = r.med("wall") / base.med("wall") - 1
            c = (r.med("target_cpu") / base.med("target_cpu") - 1) if base.med("target_cpu") else None
            if quiet or c is None or r.med("p50") is None or r.med("rate") is None:
                line(f"slowdown of c_workers at {hz} Hz ≤ {limit:.0%}",
                     f"wall {s:+.1%}" + (f" (target CPU time {c:+.1%})" if c is not None else ""), s <= limit)
            else:
                # On a loaded machine wall time mostly measures the load: judge on the
                # target's CPU time plus the time it sits stopped (rate x median pause).
                stopped = r.med("rate") * r.med("p50") / 1e6
                line(f"slowdown of c_workers at {hz} Hz ≤ {limit:.0%}",
                     f"machine loaded, wall {s:+.1%} not judged; target CPU time {c:+.1%} + time stopped "
                     f"{stopped:.1%} = {c + stopped:+.1%}", c + stopped <= limit)
    r = find(rows, "c_workers", "profiler ptrace 1000 Hz")
    if r and r.med("p50") is not None:
        line("pause p50 ≤ 30 µs, p99 ≤ 150 µs (c_workers, 1000 Hz)",
             f"p50 {r.med('p50'):.0f} µs, p99 {r.med('p99'):.0f} µs",
             r.med("p50") <= 30 and r.med("p99") <= 150)
    for hz in (100, 1000):
        two = find(rows, "busy_threads: 2 busy", f"profiler ptrace {hz} Hz")
        hundred = find(rows, "busy_threads: 2 busy + 100 idle", f"profiler ptrace {hz} Hz")
        if two and hundred and two.cpu_per_s() and hundred.cpu_per_s():
            ratio = hundred.cpu_per_s() / two.cpu_per_s()
            b2 = find(rows, "busy_threads: 2 busy", "unprofiled")
            b100 = find(rows, "busy_threads: 2 busy + 100 idle", "unprofiled")
            extra = ""
            if b2 and b100 and all(x.med("wall") for x in (two, hundred, b2, b100)):
                extra = (f"; target slowdown {two.med('wall') / b2.med('wall') - 1:+.1%} vs "
                         f"{hundred.med('wall') / b100.med('wall') - 1:+.1%}")
            line(f"2 busy + 100 idle threads cost ≤ 2 × 2 busy threads ({hz} Hz, profiler CPU)",
                 f"{hundred.cpu_per_s():.3f} vs {two.cpu_per_s():.3f} s/s = {ratio:.2f}×{extra}", ratio <= 2)
    r = find(rows, "c_workers", "profiler ptrace 1000 Hz")
    if r and r.cpu_per_s() is not None:
        line("profiler CPU ≤ 0.15 s per s (c_workers, 1000 Hz, naming included)",
             f"{r.cpu_per_s():.3f} s/s", r.cpu_per_s() <= 0.15)
    if r and r.max_rss_kib():
        line(f"profiler peak RSS ≤ {RSS_BUDGET_MIB} MiB (c_workers, 1000 Hz, worst run)",
             f"{r.max_rss_kib() / 1024:.1f} MiB", r.max_rss_kib() / 1024 <= RSS_BUDGET_MIB)
    # The worst single run of the agent anywhere: every fixture, the oversubscribed runs and
    # the attach tests (the large-DWARF target included).
    peaks = [(x.max_rss_kib(), f"{x.scenario.binary}, {x.config.name()}")
             for x in rows + over if x.config.tool == "ours" and x.max_rss_kib()]
    peaks += [(max(a.rss_kib), f"attach to {a.target}") for a in attach if a.rss_kib]
    if peaks:
        worst_rss, where = max(peaks)
        line(f"profiler peak RSS ≤ {RSS_BUDGET_MIB} MiB (worst run over all fixtures and attach tests)",
             f"{worst_rss / 1024:.1f} MiB ({where})", worst_rss / 1024 <= RSS_BUDGET_MIB)
    for a in attach:
        if a.first_ms:
            m = statistics.median(a.first_ms)
            line(f"attach to first sample ≤ 100 ms ({a.target})",
                 f"median {m:.1f} ms, max {max(a.first_ms):.1f} ms ({len(a.first_ms)} runs)", m <= 100)
        elif a.error:
            line(f"attach to first sample ≤ 100 ms ({a.target})", a.error, None)
    o = next((x for x in over if x.scenario.loaded and x.config.name().endswith("(real-time sampler)")), None)
    if o and o.tvd() is not None:
        line("oversubscribed attribution error ≤ 0.05 (ptrace, 1000 Hz, default settings)", f"{o.tvd():.3f}",
             o.tvd() <= 0.05)
    out += perf_source_budgets(rows, over)
    return out


RSS_BUDGET_MIB = 40

PAUSE_NOTE = ("Pause: the sampler's own measurement, from the moment it learns that a thread has "
              "stopped to the thread's resume (register read and stack copy). It leaves out the "
              "kernel's part of the stop (the interrupt, entering and leaving the stop, the wake-up), "
              "which the wall slowdown includes.")


def git_revision() -> str:
    """`git describe`-like revision of the tree the report was made from (`-dirty` when it
    has uncommitted changes), or `?`."""
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        # Documents (this report, the README it feeds) do not change what was measured.
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no",
                                "--", ".", ":(exclude)*.md"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def perf_source_budgets(rows: list[Row], over: list[Row]) -> list[str]:
    """Issue 10's budgets: the agent's perf source against `perf record` in the same run,
    and the ptrace source on the deep recursion."""
    out = []

    def line(budget, measured, ok):
        out.append(f"| {budget} | {measured} | {'—' if ok is None else ('yes' if ok else '**no**')} |")

    by_sc: dict[str, dict[str, Row]] = {}
    for r in rows:
        by_sc.setdefault(r.scenario.title, {})[r.config.name()] = r
    for title, cf in by_sc.items():
        base = cf.get("unprofiled")
        short = title.split(" (")[0].split(":")[0] if not title.startswith("busy") else title
        for hz in (100, 1000):
            ours, perf = cf.get(f"profiler perf {hz} Hz"), cf.get(f"perf record {hz} Hz")
            if not ours or not perf:
                continue
            if base and base.med("wall") and ours.med("wall") and perf.med("wall"):
                so = ours.med("wall") / base.med("wall") - 1
                sp = perf.med("wall") / base.med("wall") - 1
                line(f"perf source slowdown within 1 point of perf record ({short}, {hz} Hz)",
                     f"{so:+.1%} vs {sp:+.1%}", so <= sp + 0.01)
            ro, rp = ours.med("root"), perf.med("root")
            if ro is not None and rp is not None and (rp >= 0.999 or title.startswith("deep")):
                line(f"perf source stacks to root 100% where perf's are, and on the deep recursion ({short}, {hz} Hz)",
                     f"{ro:.1%} (perf {rp:.1%})", ro >= (0.99 if title.startswith("deep") else 0.995))
            # CPU for the same samples: per sample, perf counting `perf script` too.
            n_o = median([total(x.stacks) for x in ours.results if x.stacks])
            n_p = median([total(x.stacks) for x in perf.results if x.stacks])
            c_o = ours.med("agent_cpu")
            c_p = median([x.agent_cpu + (x.post_cpu or 0) for x in perf.results
                          if x.error is None and x.agent_cpu is not None])
            if n_o and n_p and c_o is not None and c_p:
                po, pp = c_o / n_o * 1e6, c_p / n_p * 1e6
                line(f"perf source CPU per sample ≤ perf record + perf script ({short}, {hz} Hz)",
                     f"{po:.0f} µs vs {pp:.0f} µs", po <= pp)
            if ours.med("agent_rss_kib"):
                line(f"perf source peak RSS ≤ 40 MiB ({short}, {hz} Hz)",
                     f"{ours.med('agent_rss_kib') / 1024:.1f} MiB", ours.med("agent_rss_kib") / 1024 <= 40)
        pt = cf.get("profiler ptrace 1000 Hz")
        if title.startswith("deep") and pt and base and pt.med("wall") and base.med("wall"):
            s = pt.med("wall") / base.med("wall") - 1
            err = pt.tvd()
            line("ptrace source: 2 MiB recursion at 1000 Hz slows down ≤ 10% with every sample complete",
                 f"{s:+.1%}, stacks to root {fmt(pt.med('root'), '.1%')}, exact stacks {fmt(None if err is None else 1 - err, '.1%')}",
                 s <= 0.10 and (pt.med("root") or 0) >= 0.999)
    o = next((x for x in over if x.scenario.loaded and x.config.name() == "profiler perf 1000 Hz"), None)
    p = next((x for x in over if x.scenario.loaded and x.config.tool == "perf"), None)
    if o and p and o.tvd() is not None and p.tvd() is not None:
        line("perf source oversubscribed attribution error within 0.01 of perf record's (1000 Hz)",
             f"{o.tvd():.3f} vs {p.tvd():.3f}", o.tvd() <= p.tvd() + 0.01)
    return out




def machine_note(load_before, load_after, perf_note: str) -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    kernel = os.uname().release
    lines = [
        f"Machine: {os.cpu_count()} CPUs ({cpu}), Linux {kernel}. "
        f"1-min load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"(5-min {load_after[1]:.2f}). Revision {git_revision()}.",
    ]
    if perf_note:
        lines.append(f"perf: {perf_note}")
    return lines


# --------------------------------------------------------------------------------------
# README figures, generated from a report file
# --------------------------------------------------------------------------------------

README_BEGIN = "<!-- bench:begin: generated by `python3 scripts/bench.py --readme README.md --from-report {report}`; do not edit by hand -->"
README_END = "<!-- bench:end -->"


def parse_report(text: str) -> dict[str, list[dict[str, str]]]:
    """The markdown tables of a report, by the `###` heading above each: rows as dicts from
    column header to cell. The run's `Machine:`/`Mode:` lines are under the key `_notes`."""
    tables: dict[str, list[dict[str, str]]] = {}
    notes: list[dict[str, str]] = []
    heading = ""
    header: Optional[list[str]] = None
    for line in text.splitlines():
        if line.startswith("### "):
            heading, header = line[4:].strip(), None
            continue
        if line.startswith(("Machine:", "Mode:")):
            notes.append({"text": line.strip()})
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            tables[heading] = []
        elif all(set(c) <= set("-:") for c in cells):
            continue
        else:
            tables[heading].append(dict(zip(header, cells)))
    tables["_notes"] = notes
    return tables


def cell_number(cell: Optional[str]) -> Optional[float]:
    """The first number of a cell (`+5.9%` -> 5.9, `0.124` -> 0.124, `—` -> None)."""
    if not cell:
        return None
    m = re.search(r"[-+−]?\d+(?:\.\d+)?", cell)
    return float(m.group(0).replace("−", "-")) if m else None


def readme_block(report: str, report_name: str) -> list[str]:
    """The README's benchmark figures, every one taken from the report text: a table of the
    main rows and the facts the README's comparison with perf rests on."""
    t = parse_report(report)
    fixtures = next((v for k, v in t.items() if k.startswith("Fixtures")), [])
    over = next((v for k, v in t.items() if k.startswith("Oversubscribed")), [])
    attach = next((v for k, v in t.items() if k.startswith("Attach")), [])
    budgets = t.get("Budgets", [])
    out = [README_BEGIN.format(report=report_name), ""]
    notes = " ".join(n["text"] for n in t["_notes"])
    out += [f"From `{report_name}` (its opening lines name the command that wrote it). {notes}", ""]

    def col(row, prefix):
        return next((v for k, v in (row or {}).items() if k.startswith(prefix)), "—")

    # The report's columns (those it has), under shorter names.
    columns = [("slowdown", "wall slowdown"), ("rate", "rate Hz"), ("ticks skipped", "ticks skipped"),
               ("stacks to root", "stacks to root"), ("attribution error", "attribution error"),
               ("profiler CPU", "agent CPU s/s"), ("profiler peak RSS", "peak RSS MiB"),
               ("pause", "pause p50 / p99 µs")]
    have = set().union(*(r.keys() for r in fixtures)) if fixtures else set()
    columns = [(k, h) for k, h in columns if any(c.startswith(k) for c in have)]
    out += ["| fixture | configuration | " + " | ".join(h for _, h in columns) + " |",
            "|---|---|" + "---|" * len(columns)]
    for r in fixtures:
        cfg = r.get("configuration", "")
        if "1000 Hz" in cfg or (r.get("fixture", "").startswith("c_workers") and cfg != "unprofiled"):
            out.append(f"| {r['fixture']} | {cfg} | " + " | ".join(col(r, k) for k, _ in columns) + " |")
    out.append("")

    def find(fixture_prefix, cfg):
        return next((r for r in fixtures if r.get("fixture", "").startswith(fixture_prefix)
                     and r.get("configuration") == cfg), None)

    def perf_row(fixture_prefix, cfg):
        # perf record's row at the rate of `cfg` ("profiler [SAMPLER] N Hz"): named
        # "perf record N Hz" (older reports: "perf N Hz").
        hz = " ".join(cfg.split()[-2:])
        return find(fixture_prefix, f"perf record {hz}") or find(fixture_prefix, f"perf {hz}")

    def sampler_rows(sampler):
        # Our rows of one sampler: "profiler SAMPLER N Hz" (older reports: "profiler N Hz").
        return [r for r in fixtures if r.get("configuration", "").startswith(f"profiler {sampler} ")
                or (sampler == "ptrace" and re.fullmatch(r"profiler \d+ Hz", r.get("configuration", "")))]

    facts = []
    # Agent CPU against perf record's, fixture by fixture at 1000 Hz.
    lower, higher = [], []
    for r in fixtures:
        cfg = r.get("configuration", "")
        if not (cfg.startswith("profiler") and cfg.endswith(" 1000 Hz")):
            continue
        p = perf_row(r["fixture"], cfg)
        ours, theirs = cell_number(col(r, "profiler CPU")), cell_number(col(p, "profiler CPU")) if p else None
        if ours is None or theirs is None:
            continue
        parts = cfg.split()
        name = r["fixture"].split(" (")[0] + (f" ({parts[1]})" if len(parts) == 4 else "")
        (lower if ours < theirs else higher).append(f"{name} {ours:.3f} vs {theirs:.3f}")
    if lower or higher:
        facts.append("Agent CPU against `perf record`'s at 1000 Hz (s/s): "
                     + (f"lower on {', '.join(lower)}" if lower else "lower on none")
                     + (f"; higher on {', '.join(higher)}" if higher else "") + ".")
    # Wall slowdown against perf's.
    slow = []
    for r in fixtures:
        if r.get("configuration", "").startswith("profiler") and cell_number(col(r, "slowdown")) is not None:
            p = perf_row(r["fixture"], r["configuration"])
            slow.append(f"{r['fixture'].split(' (')[0]} at {r['configuration'].split(' ', 1)[1]} "
                        f"{col(r, 'slowdown')} (perf {col(p, 'slowdown') if p else '—'})")
    if slow:
        facts.append("Wall slowdown of the target (perf's in brackets): " + "; ".join(slow) + ".")
    # What idle threads cost.
    idle = []
    for hz in ("100 Hz", "1000 Hz"):
        two = next((r for r in sampler_rows("ptrace") if r["fixture"].startswith("busy_threads: 2 busy")
                    and not r["fixture"].startswith("busy_threads: 2 busy +") and r["configuration"].endswith(f" {hz}")), None)
        many = next((r for r in sampler_rows("ptrace") if r["fixture"].startswith("busy_threads: 2 busy + 100 idle")
                     and r["configuration"].endswith(f" {hz}")), None)
        if two and many and two is not many:
            idle.append(f"at {hz} wall slowdown {col(two, 'slowdown')} → {col(many, 'slowdown')}, "
                        f"agent CPU {col(two, 'profiler CPU')} → {col(many, 'profiler CPU')} s/s")
    if idle:
        facts.append("Idle threads are not stopped, but they are not free: adding 100 idle threads to "
                     "2 busy ones, " + "; ".join(idle) + ".")
    # Samples in clock_gettime against perf's.
    ours_cg = [cell_number(r.get("samples in clock_gettime")) for r in over if r.get("configuration", "").startswith("profiler")]
    ours_cg = [x for x in ours_cg if x is not None]
    perf_cg = next((r.get("samples in clock_gettime") for r in over
                    if r.get("configuration", "").startswith("perf") and r.get("load") == "no hogs"), None)
    if ours_cg and perf_cg:
        facts.append(f"On `c_workers` in its time-slice mode (a `clock_gettime` system call every ~64 µs) the "
                     f"profiler puts {min(ours_cg):.1f}–{max(ours_cg):.1f}% of its samples in `clock_gettime` "
                     f"(with and without CPU hogs, real-time sampler or not), where perf measures {perf_cg} "
                     f"on the same program without hogs (perf's cpu-clock share is the truth here): the "
                     f"profiler over-counts that system call.")
    # Pause.
    cw = next((r for r in sampler_rows("ptrace") if r["fixture"].startswith("c_workers")
               and r["configuration"].endswith(" 1000 Hz")), None)
    if cw:
        facts.append(f"Pause per sample (c_workers, 1000 Hz, p50 / p99): {col(cw, 'pause')} µs, as the "
                     "sampler measures it: from the moment it learns that the thread has stopped to its "
                     "resume. It leaves out the kernel's part of the stop (the interrupt, entering and "
                     "leaving the stop, the wake-up), which the wall slowdown includes.")
    # Memory: the largest peak RSS of the agent anywhere in the report.
    peaks = [(cell_number(col(r, "profiler peak RSS")), f"{r['fixture'].split(' (')[0]}, {r['configuration']}")
             for r in fixtures if r.get("configuration", "").startswith("profiler")]
    peaks += [(cell_number(col(a, "peak RSS")), f"attach to {a['target']}") for a in attach]
    peaks = [p for p in peaks if p[0] is not None]
    if peaks:
        mib, where = max(peaks)
        facts.append(f"Largest peak RSS of the agent in the report (fixtures and attach tests): "
                     f"{mib:.1f} MiB ({where}), {'over' if mib > RSS_BUDGET_MIB else 'within'} the "
                     f"{RSS_BUDGET_MIB} MiB budget.")
    for a in attach:
        dwarf = cell_number(a.get("DWARF MiB"))
        facts.append(f"Attach to first sample, {a['target']}"
                     + (f" ({dwarf:.0f} MiB of DWARF)" if dwarf and dwarf >= 1 else "")
                     + f": {a.get('first sample ms, median (max)', '—')} ms, median (max).")
    missed = [f"{b['budget']}: {b['measured']}" for b in budgets if b.get("met") == "**no**"]
    if missed:
        facts.append("Budgets not met in this run: " + "; ".join(missed) + ".")
    out += [f"- {f}" for f in facts]
    out += ["", README_END]
    return out


def update_readme(readme: Path, report: Path) -> None:
    """Replace the generated block of `readme` (between the bench markers) with one made
    from `report`."""
    text = readme.read_text()
    name = os.path.relpath(report.resolve(), readme.resolve().parent)
    begin = text.find("<!-- bench:begin")
    end = text.find(README_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"{readme}: no `<!-- bench:begin ... -->` / `{README_END}` markers")
    block = "\n".join(readme_block(report.read_text(), name))
    readme.write_text(text[:begin] + block + text[end + len(README_END):])


# --------------------------------------------------------------------------------------
# The perf source against perf record, paired
# --------------------------------------------------------------------------------------


def paired_interval(diffs: list[float], level: float = 0.9, rounds: int = 4000) -> tuple[float, float]:
    """A bootstrap interval of the median of `diffs` (resampling the repetitions)."""
    rng = random.Random(12345)
    meds = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(rounds))
    lo = meds[int((1 - level) / 2 * rounds)]
    hi = meds[min(rounds - 1, int((1 + level) / 2 * rounds))]
    return lo, hi


def run_versus_perf(reps: int, tmp: Path, log) -> list[str]:
    """The perf source and `perf record` on the fixtures with a fixed amount of work, at
    100 and 1000 Hz, with an unprofiled run in every repetition: each repetition gives
    both slowdowns against its own unprofiled run, taken minutes apart from no other, and
    their difference. Markdown lines."""
    out = ["| fixture | Hz | perf source slowdown | perf record slowdown | difference, median (90% interval) | within 1 point |",
           "|---|---|---|---|---|---|"]
    for sc in scenarios(False):
        if not sc.work:
            continue
        for hz in (100, 1000):
            configs = [Config("none"), Config("ours", hz, PERF_SOURCE), Config("perf", hz)]
            log(f"{sc.title} at {hz} Hz")
            ours, theirs, diffs = [], [], []
            for rep in range(reps):
                k = rep % len(configs)
                walls = {}
                for cfg in configs[k:] + configs[:k]:
                    try:
                        r = run_once(sc.binary, sc.args, cfg, tmp, sc.seconds)
                    except Exception as e:  # a failed run is left out, and said
                        r = Result(cfg, error=str(e))
                    if r.error or not r.wall:
                        log(f"  {cfg.name()} rep {rep + 1}: left out ({r.error})")
                        continue
                    walls[cfg.tool] = r.wall
                if len(walls) == 3:
                    a = walls["ours"] / walls["none"] - 1
                    b = walls["perf"] / walls["none"] - 1
                    ours.append(a)
                    theirs.append(b)
                    diffs.append(a - b)
                    log(f"  rep {rep + 1}/{reps}: perf source {a:+.1%}, perf record {b:+.1%}")
            if not diffs:
                out.append(f"| {sc.title} | {hz} | — | — | no complete repetition | — |")
                continue
            lo, hi = paired_interval(diffs)
            med = statistics.median(diffs)
            verdict = "yes" if hi <= 0.01 else ("no" if lo > 0.01 else "undecided")
            out.append(f"| {sc.title} | {hz} | {statistics.median(ours):+.1%} | {statistics.median(theirs):+.1%} "
                       f"| {med * 100:+.1f} pp ({lo * 100:+.1f} to {hi * 100:+.1f}) | {verdict} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs, one repetition, fewer fixtures (CI)")
    ap.add_argument("--reps", type=int, help="repetitions per configuration (default 3, quick 1)")
    ap.add_argument("--no-perf", action="store_true", help="do not run perf")
    ap.add_argument("--no-micro", action="store_true", help="skip the criterion micro-benchmarks")
    ap.add_argument("--micro", action="store_true", help="run the micro-benchmarks in --quick mode too")
    ap.add_argument("--no-oversubscribed", action="store_true", help="skip the oversubscribed scenario")
    ap.add_argument("--no-big-dwarf", action="store_true", help="skip the large-DWARF attach test")
    ap.add_argument("--only", help="comma-separated fixture binaries to run (main table)")
    ap.add_argument("--versus-perf", type=int, metavar="REPS",
                    help="run only the perf source against perf record, REPS paired repetitions per "
                         "fixture and rate, and print that table (with --output, write it there)")
    ap.add_argument("--output", type=Path, help="also write the markdown report to this file")
    ap.add_argument("--workdir", type=Path, default=TARGET / "bench",
                    help="where generated targets are cached (default target/bench)")
    ap.add_argument("--readme", type=Path,
                    help="after the run, rewrite this README's generated figures from the report "
                         "(needs --output, or --from-report)")
    ap.add_argument("--from-report", type=Path,
                    help="run nothing: rewrite the --readme figures from this report file")
    a = ap.parse_args()
    if a.from_report:
        if not a.readme:
            ap.error("--from-report needs --readme")
        update_readme(a.readme, a.from_report)
        return 0
    if a.readme and not a.output:
        ap.error("--readme needs --output (the report the figures come from)")
    reps = a.reps or (1 if a.quick else 3)

    def log(msg: str):
        print(msg, file=sys.stderr, flush=True)

    if a.versus_perf:
        with tempfile.TemporaryDirectory(prefix="profiler-bench-") as td:
            ok, note = perf_works(Path(td))
            if not ok:
                log(f"--versus-perf needs perf: {note}")
                return 2
            load_before = os.getloadavg()
            t0 = time.monotonic()
            table = run_versus_perf(a.versus_perf, Path(td), log)
        command = " ".join(["./scripts/bench.sh", *sys.argv[1:]])
        text = "\n".join(
            ["# The perf source against perf record, paired", "",
             f"Written by `{command}`. Generated: rerun it rather than edit this file.", ""]
            + machine_note(load_before, os.getloadavg(), "")
            + [f"{a.versus_perf} repetitions per fixture and rate; in each, the fixture runs unprofiled, "
               f"under the perf source and under `perf record --call-graph dwarf` (in rotated order), and "
               f"both slowdowns are taken against that repetition's unprofiled run. The difference is "
               f"perf source minus perf record, in percentage points; the interval is a bootstrap of its "
               f"median. \"within 1 point\": yes when the whole interval is at most +1, no when it is "
               f"all above, undecided otherwise. Total {time.monotonic() - t0:.0f} s.", ""]
            + table) + "\n"
        print(text)
        if a.output:
            a.output.write_text(text)
        return 0

    if not PROFILER.exists():
        log(f"{PROFILER} not found: run `cargo build --release` (make bench does)")
        return 2
    if not (FIXTURES / "c_workers").exists():
        log(f"{FIXTURES} has no fixtures: run `make fixtures`")
        return 2
    load_before = os.getloadavg()
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="profiler-bench-") as td:
        tmp = Path(td)
        have_perf, perf_note = (False, "skipped (--no-perf)") if a.no_perf else perf_works(tmp)
        if not have_perf and not a.no_perf:
            log(f"perf columns skipped: {perf_note}")
        configs = [Config("none")]
        for hz in (100, 1000):
            configs.append(Config("ours", hz, PTRACE))
        if have_perf:
            # The agent's perf_event source, and perf record itself, where perf works.
            for hz in (100, 1000):
                configs.append(Config("ours", hz, PERF_SOURCE))
            configs += [Config("perf", 100), Config("perf", 1000)]
        rows: list[Row] = []
        for sc in scenarios(a.quick):
            if a.only and sc.binary not in a.only.split(","):
                continue
            log(f"{sc.title}")
            cf = configs if sc.work else [c for c in configs if c.tool != "none"]
            # Timed fixtures have no slowdown to pin down: fewer repetitions.
            rows += run_scenario(sc, cf, reps if sc.work else max(1, min(reps, 2)), tmp, log)
        over, hogs_n = ([], 0)
        if not a.no_oversubscribed:
            over, hogs_n = run_oversubscribed(a.quick, max(1, min(reps, 2)) if not a.quick else 1,
                                              have_perf, tmp, log)
        attach: list[AttachResult] = []
        attach.append(run_attach_latency(FIXTURES / "c_workers", "c_workers (small binary)",
                                         1 if a.quick else 3, tmp, log))
        if not a.no_big_dwarf and not a.quick:
            exe = build_big_dwarf(a.workdir, BIG_COPIES, log)
            if exe:
                attach.append(run_attach_latency(
                    exe, f"generated C, -O0 -g, {BIG_FUNCS * BIG_COPIES} functions in {BIG_COPIES} units",
                    3, tmp, log))
        micro, micro_err = ([], None)
        if not a.no_micro and (a.micro or not a.quick):
            micro, micro_err = run_micro(a.quick, log)
    load_after = os.getloadavg()

    command = " ".join(["./scripts/bench.sh", *sys.argv[1:]])
    rep = ["# Benchmark report", "",
           f"Written by `{command}` (`make bench` runs it; the method is in docs/benchmarks.md). "
           "Generated: rerun it rather than edit this file.", ""]
    rep += machine_note(load_before, load_after, perf_note if not have_perf else "")
    rep += [f"Mode: {'quick' if a.quick else 'full'}, {reps} repetition(s) per configuration, interleaved; "
            f"medians. Total {time.monotonic() - t_start:.0f} s.", ""]
    rep += ["### Fixtures", ""] + main_table(rows) + [""]
    rep += ["Truths: " + "; ".join(sorted({f"{r.scenario.binary}: {r.scenario.truth.describe()}" for r in rows})), ""]
    rep += [PAUSE_NOTE, ""]
    perf_post = [r for r in rows if r.config.tool == "perf"]
    if perf_post:
        post = median([x.post_cpu for r in perf_post for x in r.results if x.post_cpu is not None])
        rep += [f"perf's CPU column is `perf record` alone; `perf script` (unwinding and naming, "
                f"done afterwards) took a median {fmt(post, '.2f')} CPU s per run on top.", ""]
    if over:
        rep += [f"### Oversubscribed ({hogs_n} spinning processes on {os.cpu_count()} CPUs)", "",
                f"Target: `c_workers --seconds S` in its CPU-time-slice mode (exactly 50/30/20 of its CPU "
                f"time; a `clock_gettime` system call every ~64 µs). \"vs truth\": the share of samples in "
                f"`clock_gettime` minus perf's without hogs.", ""]
        rep += over_table(over) + [""]
    if attach:
        rep += ["### Attach to first sample", "",
                "| target | DWARF MiB | first sample ms, median (max) | profiler CPU s (1 s at 1000 Hz, naming included) | peak RSS MiB (worst run) |",
                "|---|---|---|---|---|"]
        for x in attach:
            if x.first_ms:
                rep.append(f"| {x.target} | {fmt(x.dwarf_mib, '.1f')} | {statistics.median(x.first_ms):.1f} "
                           f"({max(x.first_ms):.1f}) "
                           f"| {statistics.median(x.agent_cpu):.2f} | {max(x.rss_kib) / 1024:.1f} |")
            else:
                rep.append(f"| {x.target} | {fmt(x.dwarf_mib, '.1f')} | {x.error} | — | — |")
        rep.append("")
    if micro or micro_err:
        rep += ["### Micro-benchmarks (criterion, median)", "", "| benchmark | time per iteration | per element |",
                "|---|---|---|"]
        for name, ns, per in micro:
            rep.append(f"| {name} | {ns / 1000:.2f} µs | {per or '—'} |")
        if micro_err:
            rep.append(f"| (failed) | {micro_err} | |")
        rep.append("")
    quiet = load_before[0] < (os.cpu_count() or 1)
    rep += ["### Budgets", ""] + budgets(rows, over, attach, quiet) + [""]
    text = "\n".join(rep)
    print(text)
    if a.output:
        a.output.write_text(text + "\n")
        if a.readme:
            update_readme(a.readme, a.output)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
