# profiler: build, fixtures, tests, checks, demo and benchmarks.
CARGO ?= cargo
DEMO_SECONDS ?= 5
DEMO_DIR ?= demo-output
# Where cargo puts its builds (CARGO_TARGET_DIR when set).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: all build release fixtures test test-long check fmt clippy doc demo bench bench-quick bench-versus-perf soak fuzz image clean

all: build

build:
	$(CARGO) build --release

release: build

fixtures:
	$(MAKE) -C fixtures

# Unit tests, then the live tests that attach to the fixtures.
test: fixtures
	$(CARGO) test --workspace --all-targets

# The #[ignore]d upload tests, which CI does not run: two minutes of Sentry outage, long
# enough for the retry backoff to reach its 60 s cap, through the uploader and through the
# agent (about 7 minutes); and, when SENTRY_TEST_DSN names a real Sentry project, one chunk
# sent to it over https.
test-long: fixtures
	$(CARGO) test --test sentry_upload -- --ignored --exact server_down_two_minutes_then_up
	$(CARGO) test --test sentry_attach -- --ignored --exact server_down_two_minutes_then_up
	@if [ -n "$$SENTRY_TEST_DSN" ]; then \
	  $(CARGO) test --test sentry_upload -- --ignored --exact real_sentry_accepts_a_chunk; \
	else \
	  echo "test-long: real_sentry_accepts_a_chunk NOT run: set SENTRY_TEST_DSN to a project's DSN"; \
	fi

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(MAKE) test

# The agent's container image from this machine's files (no registry): non-root, file
# capabilities, needs only --cap-add=SYS_PTRACE. The Dockerfile builds the same from a
# registry base. IMAGE=name:tag to choose the tag.
IMAGE ?= profiler:latest
image: build
	./scripts/agent-image.sh target/release/profiler $(IMAGE)
	@docker image inspect -f '{{.Size}}' $(IMAGE) | awk '{printf "image $(IMAGE): %.1f MB\n", $$1/1e6}'

# Run the C fixture under the profiler for a few seconds (`profiler record`), write the
# profile in every local format, print the top functions and where each file opens.
demo: build fixtures
	@mkdir -p $(DEMO_DIR)
	@$(TARGET_DIR)/release/profiler record \
	    --output $(DEMO_DIR)/c_workers.svg --output $(DEMO_DIR)/c_workers.folded \
	    --output $(DEMO_DIR)/c_workers.speedscope.json --output $(DEMO_DIR)/c_workers.json.gz \
	    --output $(DEMO_DIR)/c_workers.pb.gz \
	    -- ./fixtures/bin/c_workers --seconds $(DEMO_SECONDS) > $(DEMO_DIR)/fixture.log
	@echo
	@echo "flame graph:       $(DEMO_DIR)/c_workers.svg (open it in a browser; click to zoom, Search at the top right)"
	@echo "speedscope:        $(DEMO_DIR)/c_workers.speedscope.json (drop it on https://www.speedscope.app)"
	@echo "Firefox Profiler:  $(DEMO_DIR)/c_workers.json.gz (https://profiler.firefox.com, Load a profile from file)"
	@echo "pprof:             $(DEMO_DIR)/c_workers.pb.gz (go tool pprof -http=: $(DEMO_DIR)/c_workers.pb.gz)"

# Writes the report to docs/benchmark-report.md and the README's figures from it.
bench: build fixtures
	./scripts/bench.sh --output docs/benchmark-report.md --readme README.md

# The perf source against `perf record`, paired per repetition (25 by default, about
# 14 minutes): the slowdown difference with an interval, which a 3-repetition table cannot
# pin down to a point on a shared VM (15 repetitions left intervals about 2 points wide).
VERSUS_PERF_REPS ?= 25
bench-versus-perf: build fixtures
	./scripts/bench.sh --versus-perf $(VERSUS_PERF_REPS) --output docs/versus-perf.md

# The short version CI runs: it prints the numbers and never fails on them.
bench-quick: build fixtures
	./scripts/bench.sh --quick

# Long property-test ("fuzz") runs of the hostile-input tests. `make test` runs the same tests with a small, fixed number of cases each;
# PROFILER_FUZZ_CASES raises every proptest in tests/hostile_*.rs to that many cases.
# FUZZ_CASES and FUZZ_SECONDS bound a run: each test binary is stopped after FUZZ_SECONDS
# (CI: e.g. `make fuzz FUZZ_SECONDS=300`).
FUZZ_CASES ?= 20000
FUZZ_SECONDS ?= 600

fuzz:
	@for t in hostile_maps hostile_elf hostile_cfi hostile_stacks; do \
	  echo "fuzz: $$t ($(FUZZ_CASES) cases per property, at most $(FUZZ_SECONDS) s)"; \
	  PROFILER_FUZZ_CASES=$(FUZZ_CASES) timeout --signal=INT $(FUZZ_SECONDS) \
	    $(CARGO) test --test $$t -- --test-threads 2; \
	  status=$$?; \
	  if [ $$status -eq 124 ]; then echo "fuzz: $$t reached the time bound"; \
	  elif [ $$status -ne 0 ]; then exit $$status; fi; \
	done

# 30 minutes at 100 Hz against a thread-churning target; the agent's RSS must stay flat.
soak: build fixtures
	./scripts/soak.sh

clean:
	$(CARGO) clean
	$(MAKE) -C fixtures clean
	rm -rf $(DEMO_DIR)
