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
