#!/usr/bin/env bash
# Soak test (`make soak`, not in CI): profile a thread-churning target at 100 Hz for
# SOAK_MINUTES (default 30) with Sentry chunks written to files, sample the agent's RSS every
# 10 s, and fail if it grew by more than 10% after warm-up (90 s: the first minute and the
# first chunk, whose building sets the high-water mark of the allocator). The check needs a
# reading at 90 s and later ones, so SOAK_MINUTES below 2 is refused: it would check nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${SOAK_MINUTES:-30}
case $minutes in
  ''|*[!0-9]*) echo "soak: SOAK_MINUTES must be a whole number of minutes, not '$minutes'" >&2; exit 2 ;;
esac
if [ "$minutes" -lt 2 ]; then
  echo "soak: SOAK_MINUTES=$minutes checks nothing: the RSS is compared with its value after the" \
       "90 s warm-up, so at least 2 minutes are needed" >&2
  exit 2
fi
out=$(mktemp -d)
trap 'kill $target $agent 2>/dev/null || true; rm -rf "$out"' EXIT

./fixtures/bin/cpp_app --churn-rate 500 > /dev/null &
target=$!
sleep 0.5
./target/release/profiler attach --pid "$target" --frequency 100 \
  --duration $((minutes * 60)) --chunk-seconds 60 --output "$out/chunks/" 2> "$out/agent.log" &
agent=$!

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$agent/status" 2>/dev/null || echo 0; }
anon() { awk '/^RssAnon:/ {print $2}' "/proc/$agent/status" 2>/dev/null || echo 0; }
base=0
elapsed=0
while kill -0 "$agent" 2>/dev/null; do
  sleep 10
  elapsed=$((elapsed + 10))
  now=$(rss)
  [ "$now" = 0 ] && break
  if [ "$elapsed" -eq 90 ]; then base=$now; fi
  printf 'soak: %4d s  agent RSS %6d KiB (anonymous %6d KiB)\n' "$elapsed" "$now" "$(anon)"
  last=$now
done
wait "$agent" || { echo "soak: agent failed"; cat "$out/agent.log"; exit 1; }
tail -n 20 "$out/agent.log"
if [ "$base" -eq 0 ] || [ "$elapsed" -le 90 ]; then
  echo "soak: FAILED: the agent ended after ${elapsed} s, before any reading after the 90 s warm-up"
  exit 1
fi
growth=$(( (last - base) * 100 / base ))
echo "soak: RSS after warm-up (90 s) ${base} KiB, at the end ${last} KiB (${growth}% growth)"
[ "$growth" -le 10 ] || { echo "soak: FAILED: RSS grew by more than 10%"; exit 1; }
echo "soak: ok (${minutes} minutes)"
