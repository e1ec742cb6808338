# The two commands of the README. Both install the Debian packages a fresh
# machine lacks (scripts/install-deps.sh) before anything else.

CARGO ?= cargo

.PHONY: run test deps build bench

deps:
	./scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --bins

# A private swtpm and hostkmsd in the foreground; Ctrl-C stops both.
run: build
	./scripts/dev-run.sh

# Formatting, lints, then every test (the swtpm tests included).
test: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

# Throughput and latency (hostkms bench) and start-up with 10,000 keys;
# the figures go in BENCHMARKS.md. Not part of `make test`: timings are
# compared as ratios within one run, never asserted.
bench: deps
	$(CARGO) build --release --bins
	./scripts/bench.sh
	$(CARGO) bench --bench startup
