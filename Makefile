# The commands of the README. `make check` is the quick tier a contributor
# runs before every commit: no root, no apt, no swtpm. `make run` and
# `make test` install the Debian packages a fresh machine lacks
# (scripts/install-deps.sh) before anything else.

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

# The quick tier, a strict subset of `make test`: formatting, lints (the
# workspace lints of Cargo.toml included), and the tests that need no root
# and no TPM: every unit test of the workspace and agent-proto's own tests
# (all features, so its tokio client too). Not the integration tests of the
# daemon package: each starts swtpm. About a minute on a warm cache.
.PHONY: check
check:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --lib --bins
	$(CARGO) test -p agent-proto --all-features

# shellcheck on every shell script, found by its #! line (scripts/shellcheck.sh).
.PHONY: shellcheck
shellcheck:
	./scripts/shellcheck.sh

# The dependency tree against deny.toml: licenses, bans (duplicate versions
# warn), sources (crates.io only). Offline; cargo-deny is installed once into
# target/tools at a pinned version (scripts/deny.sh).
.PHONY: deny
deny:
	./scripts/deny.sh licenses bans sources

# Known vulnerabilities, unsound and unmaintained crates, from the RustSec
# advisory database, which cargo-deny fetches: for a machine with access to
# it, so not part of `make test`. Accepted advisories are in deny.toml.
.PHONY: audit
audit:
	./scripts/deny.sh advisories

# Everything: the units check, shellcheck, the dependency check, the quick
# tier, every cargo test (each integration test starts its own swtpm; the
# audit tests start a journald when none listens), then the end-to-end test
# under a booted systemd. The integration tests run the CLI, a binary of
# another package (hostkms-cli) that `cargo test` does not build, so every
# binary of the workspace is built first.
test: deps units shellcheck deny check
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
	$(MAKE) e2e

# Throughput and latency (hostkms bench) and start-up with 10,000 keys;
# the figures go in BENCHMARKS.md. Not part of `make test`: timings are
# compared as ratios within one run, never asserted.
bench: deps
	$(CARGO) build --release --bins -p hostkms -p hostkms-cli
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
