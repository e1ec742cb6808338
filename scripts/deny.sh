#!/bin/sh
# Runs cargo-deny against the workspace with deny.toml (`make deny`,
# `make audit`). The arguments are the checks:
#
#   scripts/deny.sh licenses bans sources   # make deny (in make test): offline
#   scripts/deny.sh advisories              # make audit: fetches the RustSec
#                                           # database, so a networked machine
#
# cargo-deny is installed once from crates.io at a pinned version into
# target/tools (cached there like cargo-deb in scripts/build-deb.sh, so a
# fresh clone pays the build once and nothing lands outside the checkout).
set -eu

cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
tools="$PWD/target/tools"
cargo_deny="$tools/bin/cargo-deny"
# Pinned so that every machine judges the tree by the same rules. 0.20.2
# needs rustc 1.88 or newer to build (the workspace itself needs 1.85).
cargo_deny_version=0.20.2

die() {
    echo "deny: $*" >&2
    exit 1
}

seconds() { date +%s; }

[ "$#" -gt 0 ] || die "usage: $0 CHECK... (licenses bans sources advisories)"

if [ ! -x "$cargo_deny" ] || ! "$cargo_deny" --version 2>/dev/null | grep -q " $cargo_deny_version\$"; then
    echo "deny: installing cargo-deny $cargo_deny_version into $tools (once; a few minutes of build)"
    start=$(seconds)
    "$CARGO" install --locked --quiet --version "$cargo_deny_version" --root "$tools" cargo-deny \
        || die "cannot install cargo-deny $cargo_deny_version from crates.io (it needs rustc >= 1.88; see the cargo output above)"
    echo "deny: cargo-deny installed in $(($(seconds) - start)) s"
fi

# --workspace: every member is a root of the graph (the root manifest is
# also the hostkms package, which alone would leave out fuzz and the CLI).
# --all-features: the optional tokio client of agent-proto is shipped too,
# so its dependencies are judged like the rest. --locked: the tree judged is
# exactly Cargo.lock's.
exec "$cargo_deny" --config deny.toml --workspace --all-features --locked check "$@"
