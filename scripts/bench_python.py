#!/usr/bin/env python3
"""The agent against py-spy on a CPython target: fixtures/py/cpu_split.py (a main thread
running three tasks in wall-clock slices and measuring its own split; see the fixture) run
unprofiled, under `profiler record --sampler ptrace --idle` (Python frames merged with
native ones), under `py-spy record --idle` (which pauses the process for each sample),
`py-spy record --idle --nonblocking` (which does not) and `py-spy record --idle --native`,
at 100 and 1000 Hz, the configurations interleaved, each repeated. Prints a markdown table:

* slowdown: the fixture's task calls per second unprofiled over profiled (1.00 = none);
* attribution error: the largest difference, over the three tasks, between a task's share
  of the samples under `main_loop` and its share of the fixture's own wall-clock time;
* main-loop samples: how many samples the error rests on.

    python3 scripts/bench_python.py [--python /usr/bin/python3 ...] [--seconds 6] [--reps 2]

py-spy comes from the venv `.ci/run` makes ($CARGO_TARGET_DIR/pyvenv, else target/pyvenv),
or --py-spy PATH; the agent from target/release (else debug), or --profiler PATH.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures/py/cpu_split.py"
TASKS = ("plain_work", "method_work", "callback_work")


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def default_profiler() -> str:
    for kind in ("release", "debug"):
        p = target_dir() / kind / "profiler"
        if p.exists():
            return str(p)
    sys.exit("build the agent first (cargo build --release)")


def read_folded(path: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            out.append((stack.split(";"), int(n)))
    return out


def attribution(stacks, split) -> tuple[float, int]:
    def has(frames, name):
        return any(f.startswith(name + " (") for f in frames)

    loop = [(f, n) for f, n in stacks if has(f, "main_loop")]
    total = sum(n for _, n in loop)
    if total == 0:
        return float("nan"), 0
    err = max(
        abs(sum(n for f, n in loop if has(f, t)) / total - split[t]) for t in TASKS
    )
    return err, total


def run(cmd, seconds, tmp: Path, folded: Path | None):
    args = cmd + [sys_python, str(FIXTURE), "--seconds", str(seconds)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=seconds * 10 + 60)
    line = next((l for l in reversed(r.stdout.splitlines()) if l.startswith("{")), None)
    if line is None:
        return None, f"no result (exit {r.returncode}): {r.stderr.strip()[-300:]}"
    fx = json.loads(line)
    res = {"cps": fx["calls_per_second"]}
    if folded is not None:
        if not folded.exists():
            return None, f"no profile written: {r.stderr.strip()[-300:]}"
        res["error"], res["samples"] = attribution(read_folded(folded), fx["split"])
    return res, None


def main():
    global sys_python
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", action="append", help="interpreters (default: /usr/bin/python3)")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rates", default="100,1000")
    ap.add_argument("--profiler", default=None)
    ap.add_argument("--py-spy", default=str(target_dir() / "pyvenv/bin/py-spy"))
    a = ap.parse_args()
    profiler = a.profiler or default_profiler()
    pythons = a.python or ["/usr/bin/python3"]
    rates = [int(r) for r in a.rates.split(",")]
    have_pyspy = Path(a.py_spy).exists()
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for rep in range(a.reps):
            for py in pythons:
                sys_python = py
                configs = [("unprofiled", None, [])]
                for hz in rates:
                    out = tmp / f"ours-{hz}.folded"
                    configs.append((f"profiler (merged native) {hz} Hz", out,
                                    [profiler, "record", "--sampler", "ptrace", "--idle",
                                     "-F", str(hz), "-o", str(out), "--"]))
                    if have_pyspy:
                        out = tmp / f"pyspy-{hz}.txt"
                        configs.append((f"py-spy {hz} Hz", out,
                                        [a.py_spy, "record", "--idle", "-r", str(hz), "-f", "raw",
                                         "-o", str(out), "--"]))
                        out = tmp / f"pyspy-nb-{hz}.txt"
                        configs.append((f"py-spy --nonblocking {hz} Hz", out,
                                        [a.py_spy, "record", "--idle", "--nonblocking", "-r",
                                         str(hz), "-f", "raw", "-o", str(out), "--"]))
                        out = tmp / f"pyspy-native-{hz}.txt"
                        configs.append((f"py-spy --native {hz} Hz", out,
                                        [a.py_spy, "record", "--idle", "--native", "-r", str(hz),
                                         "-f", "raw", "-o", str(out), "--"]))
                for name, out, cmd in configs:
                    if out is not None and out.exists():
                        out.unlink()
                    print(f"[{rep + 1}/{a.reps}] {py}: {name}", file=sys.stderr, flush=True)
                    res, err = run(cmd, a.seconds, tmp, out)
                    if err:
                        print(f"  {err}", file=sys.stderr)
                        continue
                    rows.setdefault((py, name), []).append(res)
    version = {}
    for py in pythons:
        version[py] = subprocess.run([py, "-c", "import sys; print(sys.version.split()[0])"],
                                     capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    print(f"Python targets: fixtures/py/cpu_split.py, {a.seconds:g} s per run, {a.reps} runs "
          f"per configuration, interleaved; medians. {os.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} after.\n")
    print("| CPython | configuration | slowdown | attribution error | main-loop samples |")
    print("|---|---|---|---|---|")
    for py in pythons:
        base = statistics.median(r["cps"] for r in rows.get((py, "unprofiled"), [{"cps": float("nan")}]))
        for (p, name), rs in rows.items():
            if p != py:
                continue
            slow = base / statistics.median(r["cps"] for r in rs)
            if name == "unprofiled":
                print(f"| {version[py]} | {name} | 1.00× | — | — |")
                continue
            err = statistics.median(r["error"] for r in rs)
            n = statistics.median(r["samples"] for r in rs)
            errs = ", ".join(f"{r['error']:.3f}" for r in rs)
            print(f"| {version[py]} | {name} | {slow:.2f}× | {err:.3f} ({errs}) | {n:.0f} |")


sys_python = sys.executable
if __name__ == "__main__":
    main()
