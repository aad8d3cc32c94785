# profiler: build, fixtures, tests, checks, demo and benchmarks.
CARGO ?= cargo
DEMO_SECONDS ?= 5
DEMO_DIR ?= demo-output

.PHONY: all build release fixtures test check fmt clippy doc demo bench soak clean

all: build

build:
	$(CARGO) build --release

release: build

fixtures:
	$(MAKE) -C fixtures

# Unit tests, then the live tests that attach to the fixtures.
test: fixtures
	$(CARGO) test --all-targets

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(MAKE) test

# Start the C fixture, attach for a few seconds, write a flame graph and folded stacks,
# print the top functions.
demo: build fixtures
	@mkdir -p $(DEMO_DIR)
	@./fixtures/bin/c_workers > $(DEMO_DIR)/fixture.log & pid=$$!; \
	  sleep 0.3; \
	  ./target/release/profiler attach --pid $$pid --duration $(DEMO_SECONDS) \
	    --output $(DEMO_DIR)/c_workers.svg --output $(DEMO_DIR)/c_workers.folded; \
	  status=$$?; kill $$pid 2>/dev/null; wait $$pid 2>/dev/null; \
	  echo "flame graph: $(DEMO_DIR)/c_workers.svg"; exit $$status

bench: build fixtures
	./scripts/bench.sh

# 30 minutes at 100 Hz against a thread-churning target; the agent's RSS must stay flat.
soak: build fixtures
	./scripts/soak.sh

clean:
	$(CARGO) clean
	$(MAKE) -C fixtures clean
	rm -rf $(DEMO_DIR)
