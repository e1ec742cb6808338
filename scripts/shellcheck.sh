#!/bin/sh
# `make shellcheck` (in make test): shellcheck on every shell script of the
# repository, at its strictest severity (style). Scripts are found by their
# first line (#!/bin/sh, #!/bin/bash, #!/usr/bin/env bash, ...), not by their
# name, so the Debian maintainer scripts and .ci/run are checked too. An
# exception is a `# shellcheck disable=SCxxxx` in the script, with the reason
# beside it.
set -eu

cd "$(dirname "$0")/.."

command -v shellcheck >/dev/null 2>&1 \
    || { echo "shellcheck: missing (Debian package shellcheck; run make deps)" >&2; exit 1; }

list=$(mktemp "${TMPDIR:-/tmp}/hostkms-shellcheck.XXXXXX")
trap 'rm -f "$list"' EXIT INT TERM

# Build output and git's own files are not ours to check.
find . \( -name target -o -name .git \) -prune -o -type f -print | sort | while IFS= read -r file; do
    first=$(head -n 1 "$file" 2>/dev/null | tr -d '\0') || continue
    case "$first" in
        '#!'*) ;;
        *) continue ;;
    esac
    if printf '%s\n' "$first" | grep -Eq '^#![[:space:]]*([^[:space:]]*/)?(env[[:space:]]+)?(sh|bash|dash|ksh)([[:space:]]|$)'; then
        printf '%s\n' "$file" >>"$list"
    fi
done

[ -s "$list" ] || { echo "shellcheck: found no shell script (run from the repository?)" >&2; exit 1; }
count=$(wc -l <"$list")
# One path a line (xargs -d: a space in a path stays in it); -x follows
# `source`d files.
if xargs -d '\n' shellcheck -x --severity=style <"$list"; then
    echo "shellcheck: ok ($count scripts)"
else
    echo "shellcheck: findings above (fix them, or disable one with its reason)" >&2
    exit 1
fi
