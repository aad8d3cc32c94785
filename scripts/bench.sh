#!/usr/bin/env bash
# Entry point of `make bench` (which builds the release binary and the fixtures first).
# Runs scripts/bench.py: fixtures unprofiled / under the profiler / under perf, the
# oversubscribed scenario, attach latency, the criterion micro-benchmarks; prints the
# markdown report on stdout (progress on stderr). Arguments are passed on, e.g.
#   ./scripts/bench.sh --quick            # CI: a short run, about 1-2 minutes
#   ./scripts/bench.sh --output docs/benchmarks-latest.md
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$here/bench.py" "$@"
