# syntax=docker/dockerfile:1
#
# Container image of the profiler agent: the `profiler` binary on Debian bookworm-slim.
#
# Without a registry, `make image` builds the same image from this machine's files
# (scripts/agent-image.sh). With one (BuildKit, the default builder since Docker 23;
# Podman/Buildah work too):
#
#   docker build -t profiler .
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t profiler .
#
# Profile the running container `myservice` for 60 s and write a flame graph to ./profiles
# (the agent joins myservice's PID namespace; SYS_PTRACE lets it attach):
#
#   (the agent runs as uid 10001: `chown 10001 profiles` first)
#   docker run --rm --pid=container:myservice --cap-add=SYS_PTRACE -v $PWD/profiles:/profiles \
#     profiler attach --process-name myservice --output /profiles/myservice.svg --duration 60
#
# Check what would stop an attach (permissions, ptrace_scope, capabilities, seccomp, files):
#
#   docker run --rm --pid=container:myservice --cap-add=SYS_PTRACE profiler doctor --pid 1
#
# Kubernetes sidecar: deploy/kubernetes/profiler-sidecar.yaml. Guide: docs/containers.md.

# Any recent stable Rust (edition 2024; the locked dependencies need 1.89 or later).
ARG RUST_VERSION=1

# ---- build stage ------------------------------------------------------------------------
# Same Debian release as the runtime stage, so the binary links against the same glibc.
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The whole tree minus .dockerignore (target/, fixtures/bin/, .git, ...): cargo reads every
# target the manifest declares, even the ones it does not build.
COPY . .
# The registry and target directories are BuildKit caches, so a rebuild after a source
# change recompiles only this crate; the binary is copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin profiler \
 && install -D -m 0755 target/release/profiler /out/profiler

# ---- runtime stage ----------------------------------------------------------------------
# Only the binary: it needs nothing but glibc (TLS roots for https uploads are built in).
FROM debian:bookworm-slim

ARG VERSION=0.1.0
ARG REVISION=
LABEL org.opencontainers.image.title="profiler" \
      org.opencontainers.image.description="Sampling profiler agent for running Linux processes (ptrace, DWARF unwinding); writes flame graphs, folded stacks or Sentry profile chunks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

COPY --from=build /out/profiler /usr/local/bin/profiler

# Non-root (uid 10001), as `make image` builds it. The binary carries the capabilities the
# agent may use as *permitted* file capabilities: the container's bounding set decides which
# it really gets (only SYS_PTRACE with --cap-add=SYS_PTRACE), the agent raises those into its
# effective set at start and drops everything else. No-new-privileges
# (allowPrivilegeEscalation: false) switches file capabilities off: run as root there
# (--user 0, runAsUser: 0), as deploy/kubernetes/profiler-sidecar.yaml does.
# /var/lib/profiler: the user's home, where the spool lives (mount a volume to keep unsent
# chunks across restarts). /profiles: a place for --output.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && setcap cap_sys_ptrace,cap_perfmon,cap_dac_read_search,cap_sys_nice,cap_checkpoint_restore+p /usr/local/bin/profiler \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
 && groupadd -g 10001 profiler \
 && useradd -u 10001 -g 10001 -d /var/lib/profiler -M -s /usr/sbin/nologin profiler \
 && install -d -m 0700 -o 10001 -g 10001 /var/lib/profiler \
 && install -d -m 0755 -o 10001 -g 10001 /profiles
ENV HOME=/var/lib/profiler STATE_DIRECTORY=/var/lib/profiler
USER 10001:10001

# The agent detaches from the target and flushes its outputs on SIGTERM (docker stop,
# pod termination); give it time to do so (--flush-timeout, 10 s by default):
# `docker stop -t 20` or `docker run --stop-timeout 20`.
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/profiler"]
CMD ["attach", "--help"]
