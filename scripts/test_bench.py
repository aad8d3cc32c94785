#!/usr/bin/env python3
"""Unit tests of the benchmark driver's parsing and metrics (no processes started).
Run: python3 -m unittest discover -s scripts -p 'test_*.py'"""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

PERF = """\
c_workers 20315 
\t            1c04 mix_bits (inlined)
\t            1c04 worker_direct
\t            135f main
\t           27249 __libc_start_call_main
\t            19a0 _start

my thread 77 
\t            1111 busy_spin
\t            2222 [unknown]

"""


class ParseTest(unittest.TestCase):
    def test_folded(self):
        s = bench.parse_folded("t;_start;main;f 3\nt;[unknown];g 2\n\nbad line\n")
        self.assertEqual([(x.thread, x.frames, x.count) for x in s],
                         [("t", ["_start", "main", "f"], 3), ("t", ["[unknown]", "g"], 2)])
        self.assertAlmostEqual(bench.our_root_share(s), 0.6)

    def test_perf_script(self):
        s = bench.parse_perf_script(PERF)
        self.assertEqual(len(s), 2)
        self.assertEqual(s[0].thread, "c_workers")
        self.assertEqual(s[0].frames, ["_start", "__libc_start_call_main", "main", "worker_direct", "mix_bits"])
        self.assertEqual(s[1].thread, "my thread")
        self.assertEqual(s[1].frames, ["[unknown]", "busy_spin"])
        self.assertAlmostEqual(bench.perf_root_share(s), 0.5)

    def test_summary(self):
        text = ("profiler: first sample unwound 3.0 ms after start (CLOCK_MONOTONIC 100.250000 s)\n"
                "  samples: 10 in 1 threads; rate 993.3 Hz (asked 1000 Hz); 99.5% of stacks reached their root\n"
                "  target pause per sample: p50 11 µs, p99 50 µs; agent CPU 0.25 s (0.083 s per second)\n"
                "  unwinds 1, stack bytes 5, realtime true\n")
        r = bench.Result(bench.Config("ours", 1000))
        bench.parse_summary(text, r, 100.0)
        self.assertEqual((r.rate, r.root, r.p50, r.p99, r.realtime), (993.3, 0.995, 11.0, 50.0, True))
        self.assertAlmostEqual(r.first_ms, 250.0)
        self.assertEqual((r.skipped, r.skipped_share), (0, None))

    def test_summary_with_skipped_ticks(self):
        # The sampler fell behind: the rate part carries the skipped ticks and why.
        text = ("profiled 77 (busy_threads) for 8.00 s: target exited\n"
                "  samples: 7381 in 3 threads; rate 922.8 Hz (asked 1000 Hz; 618 ticks skipped: sampler late, "
                "no real-time priority without CAP_SYS_NICE); 100.0% of stacks reached their root\n"
                "  target pause per sample: p50 15 µs, p99 81 µs; agent CPU 3.10 s (0.388 s per second)\n")
        r = bench.Result(bench.Config("ours", 1000))
        bench.parse_summary(text, r, 0.0)
        self.assertEqual((r.rate, r.root, r.skipped, r.p50), (922.8, 1.0, 618, 15.0))
        self.assertAlmostEqual(r.skipped_share, 618 / (922.8 * 8.0 + 618))
        row = bench.Row(bench.Scenario("t", "b", [], None, True), r.config, [r])
        self.assertEqual(row.skipped_cell(), "7.7% (618)")


REPORT = """\
# Benchmark report

Machine: 2 CPUs (x), Linux 6. 1-min load average 0.10 before, 0.20 after (5-min 0.30). Revision abc.
Mode: full, 3 repetition(s) per configuration, interleaved; medians. Total 300 s.

### Fixtures

| fixture | configuration | wall s (median) | slowdown | target CPU slowdown | rate Hz | ticks skipped | stacks to root | attribution error (TVD) | profiler CPU s/s | profiler peak RSS MiB (worst run) | pause p50 / p99 µs | first sample ms |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
| c_workers (1 thread) | unprofiled | 2.000 | — | — | — | — | — | — | — | — | — | — |
| c_workers (1 thread) | profiler 1000 Hz | 2.100 | +5.0% | +2.0% | 1000 | 0.0% (0) | 100.0% | 0.008 | 0.124 | 20.4 | 23 / 73 | 9.9 |
| c_workers (1 thread) | perf 1000 Hz | 2.050 | +2.5% | +3.9% | 996 | — | 100.0% | 0.004 | 0.202 | 42.7 | — | — |
| busy_threads: 2 busy | profiler 1000 Hz | 0.900 | +18.0% | +3.4% | 1000 | 0.0% (0) | 100.0% | 0.001 | 0.196 | 20.6 | 15 / 53 | 10.4 |
| busy_threads: 2 busy + 100 idle | profiler 1000 Hz | 1.100 | +45.2% | +5.7% | 923 | 7.7% (618) | 100.0% | 0.000 | 0.392 | 21.2 | 15 / 81 | 31.3 |
| deep_recursion (2000 frames) | profiler 1000 Hz | — | — | — | 1000 | 0.0% (0) | 99.6% | 0.008 | 0.653 | 36.6 | 362 / 620 | 11.0 |
| deep_recursion (2000 frames) | perf 1000 Hz | — | — | — | 994 | — | 0.0% | 1.000 | 0.245 | 40.9 | — | — |

### Oversubscribed (6 spinning processes on 2 CPUs)

| load | configuration | attribution error (TVD) | samples in clock_gettime | vs truth | rate Hz | ticks skipped | profiler CPU s/s | pause p50 / p99 µs | sampler real-time |
|---|---|---|---|---|---|---|---|---|---|
| no hogs | profiler 1000 Hz (real-time sampler) | 0.006 | 12.6% | +11.3% | 1000 | 0.0% (0) | 0.138 | 26 / 104 | yes |
| no hogs | perf 1000 Hz | 0.002 | 1.3% | +0.0% | 993 | — | 0.203 | — | — |
| 6 hogs on 2 CPUs | profiler 1000 Hz --no-realtime | 0.019 | 7.7% | +6.4% | 990 | 1.0% (20) | 0.115 | 20 / 52 | no |

### Attach to first sample

| target | DWARF MiB | first sample ms, median (max) | profiler CPU s (1 s at 1000 Hz, naming included) | peak RSS MiB (worst run) |
|---|---|---|---|---|
| big | 295.8 | 17.6 (20.8) | 0.59 | 109.4 |

### Budgets

| budget | measured | met |
|---|---|---|
| profiler peak RSS ≤ 40 MiB (worst run over all fixtures and attach tests) | 109.4 MiB (attach to big) | **no** |
| pause p50 ≤ 30 µs, p99 ≤ 150 µs (c_workers, 1000 Hz) | p50 23 µs, p99 73 µs | yes |
"""


class ReadmeTest(unittest.TestCase):
    def test_block_from_report(self):
        text = "\n".join(bench.readme_block(REPORT, "docs/r.md"))
        self.assertTrue(text.startswith("<!-- bench:begin"))
        self.assertTrue(text.endswith(bench.README_END))
        self.assertIn("Revision abc.", text)
        # Rows at 1000 Hz, the skipped ticks with them; no unprofiled row.
        self.assertIn("| busy_threads: 2 busy + 100 idle | profiler 1000 Hz | +45.2% | 923 | 7.7% (618) |", text)
        self.assertNotIn("unprofiled", text)
        self.assertIn("lower on c_workers 0.124 vs 0.202; higher on deep_recursion 0.653 vs 0.245", text)

    def test_rows_named_by_sampler_find_perf_record(self):
        # Reports since the perf source name their rows "profiler SAMPLER N Hz" and perf's
        # "perf record N Hz": the facts still pair each with perf's row.
        report = (REPORT.replace("| profiler 1000 Hz |", "| profiler ptrace 1000 Hz |")
                  .replace("| perf 1000 Hz |", "| perf record 1000 Hz |"))
        text = "\n".join(bench.readme_block(report, "docs/r.md"))
        self.assertIn("lower on c_workers (ptrace) 0.124 vs 0.202", text)
        self.assertIn("c_workers at ptrace 1000 Hz +5.0% (perf +2.5%)", text)
        self.assertIn("at 1000 Hz wall slowdown +18.0% → +45.2%", text)
        self.assertIn("at 1000 Hz wall slowdown +18.0% → +45.2%, agent CPU 0.196 → 0.392 s/s", text)
        self.assertIn("7.7–12.6% of its samples in `clock_gettime`", text)
        self.assertIn("perf measures 1.3%", text)
        self.assertIn("23 / 73 µs", text)
        self.assertIn("kernel's part of the stop", text)
        self.assertIn("Largest peak RSS of the agent in the report (fixtures and attach tests): "
                      "109.4 MiB (attach to big), over the 40 MiB budget", text)
        self.assertIn("Budgets not met in this run: profiler peak RSS", text)
        self.assertIn("big (296 MiB of DWARF): 17.6 (20.8) ms", text)

    def test_block_leaves_out_columns_the_report_lacks(self):
        old = REPORT.replace(" ticks skipped |", "").replace(" 0.0% (0) |", "").replace(" 7.7% (618) |", "")
        old = old.replace("|---|---|---|---|---|---|---|---|---|---|---|---|---|", "|---|---|---|---|---|---|---|---|---|---|---|---|")
        text = "\n".join(bench.readme_block(old, "docs/r.md"))
        self.assertNotIn("ticks skipped", text.split("\n- ")[0])
        self.assertIn("| busy_threads: 2 busy + 100 idle | profiler 1000 Hz | +45.2% | 923 | 100.0% |", text)

    def test_update_readme_keeps_the_rest(self):
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            readme, report = Path(d) / "README.md", Path(d) / "docs" / "r.md"
            report.parent.mkdir()
            report.write_text(REPORT)
            readme.write_text("before\n<!-- bench:begin old -->\nold figures\n<!-- bench:end -->\nafter\n")
            bench.update_readme(readme, report)
            text = readme.read_text()
            self.assertTrue(text.startswith("before\n<!-- bench:begin: generated by"))
            self.assertIn("--from-report docs/r.md`", text)
            self.assertNotIn("old figures", text)
            self.assertTrue(text.endswith("<!-- bench:end -->\nafter\n"))


class MetricTest(unittest.TestCase):
    def test_tvd(self):
        self.assertAlmostEqual(bench.tvd({"a": 0.5, "b": 0.5}, {"a": 1.0}), 0.5)
        self.assertEqual(bench.tvd({"a": 0.2}, {"a": 0.2}), 0.0)

    def test_shares(self):
        truth = bench.Shares({"x": 0.5, "y": 0.3, "z": 0.2})
        stacks = [bench.Stack("t", ["main", "x"], 50), bench.Stack("t", ["main", "r", "y"], 30),
                  bench.Stack("t", ["main", "z", "clock"], 10), bench.Stack("t", ["main", "other"], 99)]
        # Normalised over the three workers: 50/90, 30/90, 10/90.
        self.assertAlmostEqual(truth.error(stacks), 0.5 * (abs(50 / 90 - 0.5) + abs(30 / 90 - 0.3) + abs(10 / 90 - 0.2)))
        self.assertIsNone(truth.error([bench.Stack("t", ["main"], 1)]))

    def test_expect_and_exact(self):
        e = bench.Expect({"busy-": "busy_spin"})
        s = [bench.Stack("busy-0", ["start", "busy_spin"], 9), bench.Stack("busy-1", ["start", "nanosleep"], 1),
             bench.Stack("idle-0", ["nanosleep"], 100)]
        self.assertAlmostEqual(e.error(s), 0.1)
        x = bench.ExactStack("d", "deep", 2, "leaf")
        s = [bench.Stack("d", ["main", "deep", "deep", "leaf"], 3), bench.Stack("d", ["[truncated]", "deep", "leaf"], 1)]
        self.assertAlmostEqual(x.error(s), 0.25)

    def test_share_with(self):
        s = [bench.Stack("t", ["a", "clock_gettime"], 1), bench.Stack("t", ["a"], 3)]
        self.assertAlmostEqual(bench.share_with(s, ("clock_gettime",)), 0.25)


if __name__ == "__main__":
    unittest.main()
