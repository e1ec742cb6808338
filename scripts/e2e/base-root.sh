#!/bin/bash
# Prints the path of a pristine, minimal Debian root for `make e2e`, making
# it with debootstrap the first time (about a minute, ~200 MB) and caching
# it under target/e2e/. The cache key hashes the suite, the mirror and the
# package list, so changing any of them makes a new root; stale roots are
# deleted. Runs never write to this root: scripts/e2e.sh boots a copy.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cache="$top/target/e2e"
SUITE=bookworm

# What the booted system needs: systemd as PID 1 (systemd, systemd-sysv,
# dbus), the software TPM and the tools to talk to it, and the shared
# libraries hostkmsd links against or dlopens (the swtpm TCTI). The .deb's
# Depends must all be here, because the container has no network when the
# .deb is installed.
PACKAGES="systemd systemd-sysv dbus swtpm swtpm-tools tpm2-tools
libtss2-esys-3.0.2-0 libtss2-mu0 libtss2-sys1 libtss2-tctildr0
libtss2-tcti-swtpm0 libssl3"

# The machine's configured Debian mirror for $SUITE (deb822 .sources first,
# then the one-line format); E2E_MIRROR overrides it.
configured_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        # Stanzas are separated by blank lines; print the first URI of a
        # stanza whose Suites lists $SUITE itself (not -security/-updates).
        awk -v suite="$SUITE" '
            function flush() { if (ok && uri != "") { print uri; found = 1; exit } ok = 0; uri = "" }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            END { if (!found) flush() }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        sed -e 's/\[[^]]*\]//' "$f" | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2 }'
    done
}
mirror=${E2E_MIRROR:-$(configured_mirror | head -n 1)}
mirror=${mirror:-http://deb.debian.org/debian}

# Word splitting wanted: one package name per word, joined with commas.
# shellcheck disable=SC2086
packages=$(echo $PACKAGES | tr ' ' ',')
key=$(printf '%s\n' "$SUITE" "$mirror" "$packages" | sha256sum | cut -c1-16)
base="$cache/base-$key"
stamp="$cache/base-$key.done"

if [ -f "$stamp" ] && [ -d "$base" ]; then
    echo "$base"
    exit 0
fi

for tool in debootstrap systemd-nspawn; do
    command -v "$tool" >/dev/null || {
        echo "e2e: $tool is missing; run scripts/install-deps.sh (make deps) as root" >&2
        exit 1
    }
done

mkdir -p "$cache"
tmp="$cache/building-$key"
rm -rf "$cache"/building-*   # leftovers of interrupted builds
echo "e2e: making a $SUITE root with debootstrap from $mirror (about a minute, once)" >&2
start=$(date +%s)
# A mirror that drops a connection fails the whole debootstrap: try three
# times, from scratch, before giving up.
attempt=1
until debootstrap --variant=minbase --include="$packages" "$SUITE" "$tmp" "$mirror" \
        >"$cache/debootstrap.log" 2>&1; do
    echo "e2e: debootstrap failed (attempt $attempt of 3); the end of $cache/debootstrap.log:" >&2
    tail -n 30 "$cache/debootstrap.log" >&2
    [ -f "$tmp/debootstrap/debootstrap.log" ] && tail -n 30 "$tmp/debootstrap/debootstrap.log" >&2
    rm -rf "$tmp"
    [ "$attempt" -lt 3 ] || exit 1
    attempt=$((attempt + 1))
    sleep 5
done
# No downloaded .debs in the cache: they are ~100 MB copied on every run.
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*_Packages
# A root without a machine-id gets a new one per boot; an empty file makes
# systemd mint a transient one without running first-boot setup.
: >"$tmp/etc/machine-id"

# Replace any root made from an older package list, then publish this one.
rm -rf "$cache"/base-*
mv "$tmp" "$base"
printf 'suite=%s\nmirror=%s\npackages=%s\n' "$SUITE" "$mirror" "$packages" >"$stamp"
echo "e2e: root ready in $(( $(date +%s) - start )) s: $base" >&2
echo "$base"
