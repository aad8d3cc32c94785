# syntax=docker/dockerfile:1
#
# Container image of the profiler agent: the `profiler` binary on Debian bookworm-slim.
#
# Build (BuildKit, the default builder since Docker 23; Podman/Buildah work too):
#
#   docker build -t profiler .
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t profiler .
#
# Profile the running container `myservice` for 60 s and write a flame graph to ./profiles
# (the agent joins myservice's PID namespace; SYS_PTRACE lets it attach):
#
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

# /var/lib/profiler: holds the default --spool-dir, /var/lib/profiler/spool (chunks not yet
# accepted by Sentry; the agent creates it 0700 and refuses one another user could write;
# mount a volume at /var/lib/profiler to keep them across restarts). /profiles: conventional
# place for --output.
RUN mkdir -p -m 0700 /var/lib/profiler \
 && mkdir -p -m 0755 /profiles

# The agent runs as root, on purpose. Attaching to another container's process (often itself
# root, with more capabilities than the agent keeps) needs CAP_SYS_PTRACE in the *effective*
# set. Docker and Kubernetes give added capabilities to a non-root user's process only through
# file capabilities, which no-new-privileges (allowPrivilegeEscalation: false) disables, and
# they set no ambient capabilities; so a non-root agent could attach only to processes of its
# own uid, and not at all under Yama ptrace_scope >= 1 (the default on Ubuntu nodes).
# Root here is a weak root: run the container with every other capability dropped
# (--cap-drop=ALL --cap-add=SYS_PTRACE, or the Kubernetes example), and the agent itself
# drops all but CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH and CAP_SYS_NICE at start.
# hadolint ignore=DL3002
USER 0:0

# The agent detaches from the target and flushes its outputs on SIGTERM (docker stop,
# pod termination); give it time to do so (--flush-timeout, 10 s by default):
# `docker stop -t 20` or `docker run --stop-timeout 20`.
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/profiler"]
CMD ["attach", "--help"]
