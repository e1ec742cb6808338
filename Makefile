# The two commands of the README. Both install the Debian packages a fresh
# machine lacks (scripts/install-deps.sh) before anything else.

CARGO ?= cargo

.PHONY: run test deps build bench fuzz

deps:
	./scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --bins

# A private swtpm and hostkmsd in the foreground; Ctrl-C stops both.
run: build
	./scripts/dev-run.sh

# The systemd units, sysusers and journald catalog: systemd-analyze verify
# (silent), security exposure (at most 1.0), catalog ids (scripts/check-units.sh).
.PHONY: units
units: deps
	./scripts/check-units.sh

# The Debian package target/debian/hostkms_<version>_amd64.deb, checked with
# lintian (errors fail). cargo-deb is cached in target/tools. See packaging/README.md.
.PHONY: deb
deb: deps
	./scripts/build-deb.sh

# hostkms under a real systemd: boots a cached minimal Debian root
# (target/e2e/) with systemd-nspawn, installs the .deb, and checks socket
# activation, key operations, grants, restart, reload, the journald audit
# trail, the watchdog and a clean stop. As root. See scripts/e2e.sh.
.PHONY: e2e
e2e: deb
	./scripts/e2e.sh

# The units check, formatting, lints, every cargo test (each starts its own
# swtpm; the audit tests start a journald when none listens), then the
# end-to-end test under a booted systemd.
test: deps units
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace
	$(MAKE) e2e

# Throughput and latency (hostkms bench) and start-up with 10,000 keys;
# the figures go in BENCHMARKS.md. Not part of `make test`: timings are
# compared as ratios within one run, never asserted.
bench: deps
	$(CARGO) build --release --bins
	./scripts/bench.sh
	$(CARGO) bench --bench startup

# Proof at scale: FUZZ_FRAMES (default 10^6) mutated frames through
# agent-proto's decoder in process, then as many through the real hostkmsd
# on a private swtpm (workers as uid 65534 when run as root), while a
# separate connection pings. Reports panics, the daemon's RSS (start, max,
# end) and answered pings; exits non-zero on a panic, a dead daemon, an
# unanswered ping, a stalled connection or RSS growth past
# FUZZ_RSS_GROWTH_MIB (64). FUZZ_SEED reproduces a run (the seed is
# printed). Not part of `make test`; see fuzz/README.md.
fuzz: deps
	$(CARGO) build --release --bins -p hostkms -p hostkms-fuzz
	./target/release/hostkms-fuzz
