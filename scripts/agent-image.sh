#!/usr/bin/env bash
# The agent's container image, built from this machine's files (no registry needed):
# the binary and the libraries it links, a non-root user (10001) whose home
# /var/lib/profiler holds the spool, and file capabilities in the *permitted* set only
# (the agent raises what it needs into its effective set and drops everything else), so
# the image runs as non-root and works with only `--cap-add=SYS_PTRACE`.
#
#   scripts/agent-image.sh [BINARY] [TAG]    (defaults: target/release/profiler profiler:latest)
#
# `make image` runs it. The Dockerfile builds the same image from a registry base.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${1:-$here/../target/release/profiler}"
tag="${2:-profiler:latest}"
# libstdc++'s demangler is the agent's fallback for C++ names its own demangler gives up
# on (loaded with dlopen, so `ldd` does not list it): include it when this machine has it.
extra=()
# awk reads the whole list: leaving early would end ldconfig with SIGPIPE, which pipefail
# turns into a failure of this script (seen in CI: an empty error and exit 141).
stdcxx="$(ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 .*x86-64/ && !found {print $NF; found = 1}')" || stdcxx=""
[ -n "$stdcxx" ] && extra+=("$stdcxx:$stdcxx")
exec "$here/rootfs-image.sh" \
  --user 10001:10001 \
  --home /var/lib/profiler \
  --env STATE_DIRECTORY=/var/lib/profiler \
  --caps cap_sys_ptrace,cap_perfmon,cap_dac_read_search,cap_sys_nice,cap_checkpoint_restore+p \
  --entrypoint /usr/local/bin/profiler \
  --cmd '["attach","--help"]' \
  "$tag" "$bin:/usr/local/bin/profiler" "${extra[@]}"
