#!/bin/sh
# Installs the Debian packages hostkms builds and tests with, when missing.
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -eu

PACKAGES="swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config sqlite3 systemd"

# `make e2e` (scripts/e2e.sh): debootstrap makes the minimal Debian root,
# systemd-container provides systemd-nspawn to boot it. nsenter and setpriv
# come from util-linux, which every Debian has.
PACKAGES="$PACKAGES debootstrap systemd-container"

# tests/it/recovery.rs: the recovery directory opens with the age CLI alone
# (age -d), as README "Backup and recovery" documents; tests/it/age_files.rs:
# age (1.1 or later runs plugins) interoperates with encrypt-file and
# decrypt-file through age-plugin-hostkms.
PACKAGES="$PACKAGES age"

# `make shellcheck` (in make test): the static check of every shell script.
PACKAGES="$PACKAGES shellcheck"

# tests/it/credential_cli.rs: strace holds `credential encrypt` in its fsync
# so that a kill -9 lands while the new file is being written.
PACKAGES="$PACKAGES strace"

missing=""
for package in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    echo "installing:$missing"
    # A mirror that drops a connection should not fail a CI run: three tries.
    for attempt in 1 2 3; do
        # $missing unquoted on purpose: one word per package (Debian package
        # names have no spaces or glob characters).
        # shellcheck disable=SC2086
        if apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing; then
            exit 0
        fi
        echo "install-deps: apt-get failed (attempt $attempt of 3)" >&2
        [ "$attempt" -lt 3 ] && sleep 5
    done
    exit 1
else
    echo "hostkms needs these Debian packages:$missing" >&2
    echo "install them with: sudo apt-get update && sudo apt-get install -y$missing" >&2
    exit 1
fi
