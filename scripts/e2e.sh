#!/bin/bash
# `make e2e`: hostkms under a real systemd. Boots a minimal Debian root
# (cached under target/e2e/ by scripts/e2e/base-root.sh) with
# systemd-nspawn, installs the .deb there, runs swtpm as a unit and points
# hostkms at it with test drop-ins, then drives the booted system with
# nsenter and checks socket activation, the key operations, grants, restart,
# reload, the journald audit trail and a clean stop. Each check prints one
# PASS/FAIL line; the first FAIL prints the units' journal and the nspawn
# log and exits 1 (E2E_KEEP_GOING=1 runs the remaining checks too).
#
# Usage: scripts/e2e.sh [PATH/TO/hostkms_*.deb]   (as root)
# Default .deb: the newest target/debian/hostkms_*_amd64.deb (`make deb`).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cache="$top/target/e2e"
t0=$(date +%s.%N)

say() { printf 'e2e: %s\n' "$*"; }
die() { printf 'e2e: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap and systemd-nspawn need it)"

# The newest package by modification time. ls -t is the one portable way to
# sort by mtime, and the names are ours (hostkms_<version>_amd64.deb: no
# spaces, no newlines), so find's safety buys nothing here.
# shellcheck disable=SC2012
deb=${1:-$(ls -t "$top"/target/debian/hostkms_*_amd64.deb 2>/dev/null | head -n 1 || true)}
if [ -z "$deb" ] || [ ! -f "$deb" ]; then
    die "no .deb to install: run \`make deb\` first or pass its path"
fi
deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")

# --- The per-run root ---------------------------------------------------------
base=$("$top/scripts/e2e/base-root.sh")
mkdir -p "$cache"
# Runs killed with SIGKILL leave their root behind: delete those whose
# script is gone (each run's directory carries its pid) and whose container
# no longer runs.
for stale in "$cache"/run.*; do
    [ -d "$stale" ] || continue
    kill -0 "${stale##*.}" 2>/dev/null && continue
    if pgrep -f -- "-D $stale/root " >/dev/null; then
        say "leaving $stale: a container still runs on it"
        continue
    fi
    rm -rf "$stale"
done
run="$cache/run.$$"
mkdir -m 0700 "$run"
root="$run/root"
name="hostkms-e2e-$$"
nspawn_pid=""
ct=""   # the container's PID 1, as seen from here
failures=0
diagnosed=0
err_line="?"
trap 'err_line=$LINENO' ERR

# Stops the container (SIGTERM to nspawn powers it off; SIGKILL if it hangs)
# and deletes the per-run root, whatever happened.
cleanup() {
    local status=$?
    # An unguarded command failed (set -e) or we were interrupted: say
    # where, and show the journal as a failed check would.
    if [ "$status" -ne 0 ] && [ "$diagnosed" = 0 ]; then
        [ "$err_line" != "?" ] && printf 'e2e: stopped by a failing command at line %s of %s\n' "$err_line" "$0" >&2
        declare -F diagnose >/dev/null && diagnose
    fi
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    if [ "${E2E_KEEP:-0}" = 1 ]; then
        say "kept the run root at $run (E2E_KEEP=1)"
    else
        rm -rf "$run"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# A full copy, so a run never writes to the cached root and runs never see
# each other's state (cp -a of the ~200 MB root took 0.4-5 s here; an
# overlay mount would save that but is not available in every CI container).
t=$(date +%s.%N)
cp -a "$base" "$root"
say "copied the cached root in $(elapsed "$t") s"

# The .deb goes in as a file; it is installed inside the booted system, as
# an administrator would, so that its postinst meets a running systemd.
cp "$deb" "$root/root/"
deb_in_root="/root/$(basename "$deb")"

# swtpm as a unit of the booted system: the TPM hostkmsd seals its root key
# to. Its state lives in /var/lib/swtpm, so it survives a restart of hostkms.
cat >"$root/etc/systemd/system/swtpm.service" <<'UNIT'
[Unit]
Description=Software TPM for the hostkms end-to-end test

[Service]
StateDirectory=swtpm
ExecStart=/usr/bin/swtpm socket --tpm2 --tpmstate dir=/var/lib/swtpm --server type=tcp,port=2321,bindaddr=127.0.0.1 --ctrl type=tcp,port=2322,bindaddr=127.0.0.1 --flags not-need-init,startup-clear
# Ready when the TPM answers; hostkms.service is ordered after this.
ExecStartPost=/bin/sh -c 'for i in $(seq 1 100); do tpm2_getrandom -T swtpm:host=127.0.0.1,port=2321 4 >/dev/null 2>&1 && exit 0; sleep 0.05; done; exit 1'

[Install]
WantedBy=multi-user.target
UNIT
ln -s /etc/systemd/system/swtpm.service "$root/etc/systemd/system/multi-user.target.wants/swtpm.service"

# Test drop-ins for the packaged hostkms.service: loopback network for the
# swtpm TCTI (the project's systemd/testing/swtpm-tcti.conf) and ordering
# after swtpm. The packaged unit itself is used unchanged.
dropins="$root/etc/systemd/system/hostkms.service.d"
mkdir -p "$dropins"
cp "$top/systemd/testing/swtpm-tcti.conf" "$dropins/swtpm-tcti.conf"
cat >"$dropins/e2e-swtpm.conf" <<'UNIT'
[Unit]
Requires=swtpm.service
After=swtpm.service
UNIT

# On any failure: the units' journal from inside, the nspawn log, exit 1.
diagnose() {
    diagnosed=1
    if [ -n "$ct" ] && [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        echo "---- journalctl -u hostkms -u hostkms.socket -u swtpm (inside the container)" >&2
        in_ct journalctl -u hostkms -u hostkms.socket -u swtpm --no-pager -o short-precise >&2 || true
        echo "---- systemctl status hostkms.socket hostkms.service swtpm.service" >&2
        in_ct systemctl status --no-pager hostkms.socket hostkms.service swtpm.service >&2 || true
    fi
    echo "---- nspawn log ($run/nspawn.log)" >&2
    cat "$run/nspawn.log" >&2 || true
}

# --- Boot ---------------------------------------------------------------------
t=$(date +%s.%N)
# --keep-unit --register=no: no machined on this host (without --keep-unit
# nspawn fails with "Failed to open system bus"). setsid: nspawn must not
# share our terminal's session or receive our Ctrl-C twice.
setsid systemd-nspawn -D "$root" --boot --register=no --keep-unit \
    --private-network --console=read-only --machine="$name" \
    </dev/null >"$run/nspawn.log" 2>&1 &
nspawn_pid=$!

# The container's PID 1 is nspawn's child whose command is systemd.
for _ in $(seq 1 200); do
    # (ps fails while nspawn has no child yet.)
    ct=$(ps -o pid=,comm= --ppid "$nspawn_pid" 2>/dev/null | awk '$2 == "systemd" { print $1; exit }' || true)
    [ -n "$ct" ] && break
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.05
done
if [ -z "$ct" ]; then
    diagnose
    die "the container did not start (journal and nspawn log above)"
fi

# Runs a command inside the booted system with a clean environment, under a
# time limit: a client whose connection waits in the socket's backlog for a
# service that never starts would otherwise block forever (exit 124 then).
in_ct() {
    local limit=60
    case "$1" in hostkms|setpriv) limit=20 ;; esac
    nsenter -t "$ct" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 timeout -k 5 "$limit" "$@"
}
# The same as user $1 (with its groups), without PAM.
as_user() {
    local user=$1
    shift
    in_ct setpriv --reuid="$user" --regid="$user" --init-groups --reset-env -- "$@"
}

state=""
for _ in $(seq 1 60); do
    # --wait blocks until boot finished; the loop covers the moments before
    # PID 1 answers on its private socket.
    state=$(in_ct systemctl is-system-running --wait 2>/dev/null || true)
    case "$state" in running|degraded) break ;; esac
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.1
done
case "$state" in
    running) say "booted to running in $(elapsed "$t") s" ;;
    degraded)
        say "booted to degraded in $(elapsed "$t") s; failed units:"
        in_ct systemctl --failed --no-pager --no-legend || true ;;
    *)
        diagnose
        die "the container did not finish booting (state: ${state:-none}; journal and nspawn log above)" ;;
esac

# --- Checks -------------------------------------------------------------------
pass() { printf 'PASS  %s\n' "$1"; }
# fail DESCRIPTION [DETAIL]
fail() {
    printf 'FAIL  %s\n' "$1"
    [ -n "${2:-}" ] && printf '      %s\n' "$2" | sed '2,$s/^/      /'
    failures=$((failures + 1))
    if [ "${E2E_KEEP_GOING:-0}" != 1 ]; then
        diagnose
        exit 1
    fi
}
# check DESCRIPTION COMMAND...: PASS when COMMAND exits 0; its output is the
# detail of a FAIL.
check() {
    local description=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$description"; else fail "$description" "exit $?: $out"; fi
}

# expect_eq DESCRIPTION WANT GOT
expect_eq() {
    if [ "$3" = "$2" ]; then pass "$1"; else fail "$1" "want \"$2\", got \"$3\""; fi
}

# A secret that exists only in this run, to look for in the journal later.
secret="e2e-secret-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
secret_b64=$(printf '%s' "$secret" | base64 -w0)
context="app=e2e"
work=/root/e2e   # scratch directory inside the container
in_ct mkdir -m 0755 -p "$work"

# Package installation: users, units, socket enabled and started by postinst.
check "dpkg -i $(basename "$deb")" in_ct dpkg -i "$deb_in_root"
expect_eq "hostkms.socket is enabled by the package" enabled \
    "$(in_ct systemctl is-enabled hostkms.socket 2>&1 || true)"
check "systemctl start hostkms.socket" in_ct systemctl start hostkms.socket
expect_eq "hostkms.socket is active" active "$(in_ct systemctl is-active hostkms.socket 2>&1 || true)"
got=$(in_ct systemctl is-active hostkms.service 2>&1 || true)
if [ "$got" != active ]; then pass "hostkms.service is not running before the first request ($got)"
else fail "hostkms.service is not running before the first request" "it is already active"; fi

# Test users, made as an administrator would: one with a grant, one without,
# both in group hostkms (which lets them reach the socket).
in_ct useradd --system --no-create-home --groups hostkms e2e-app
in_ct useradd --system --no-create-home --groups hostkms e2e-other
other_uid=$(in_ct id -u e2e-other)
app_uid=$(in_ct id -u e2e-app)

# The administrator's config: swtpm instead of /dev/tpmrm0, and a grant.
in_ct sh -c "cat >/etc/hostkms/config.toml" <<'CONFIG'
# Written by scripts/e2e.sh: the swtpm unit of this container is the TPM.
tcti = "swtpm:host=127.0.0.1,port=2321"

[[grant]]
keys = ["app-*"]
users = ["e2e-app"]
ops = ["wrap", "unwrap", "describe"]
CONFIG
in_ct systemctl daemon-reload

# Socket activation: the first request starts the service.
check "hostkms status (root) starts the service through the socket" in_ct hostkms status
expect_eq "hostkms.service is active after the first request" active \
    "$(in_ct systemctl is-active hostkms.service 2>&1 || true)"
status_text=$(in_ct systemctl show -p StatusText --value hostkms.service 2>&1 || true)
if [ -n "$status_text" ]; then pass "StatusText is set by the daemon: $status_text"
else fail "StatusText is set by the daemon (STATUS=)" "systemctl show -p StatusText is empty"; fi

# Key operations as root (an admin).
check "create-key app-e2e" in_ct hostkms create-key app-e2e
printf '%s' "$secret" | check "wrap with --context (v1)" \
    in_ct hostkms wrap app-e2e --context "$context" --out "$work/v1.ct"
expect_eq "unwrap returns the secret" "$secret" \
    "$(in_ct hostkms unwrap --context "$context" --in "$work/v1.ct" 2>&1 || true)"
out=$(in_ct hostkms unwrap --context app=other --in "$work/v1.ct" 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 1 ]; then pass "unwrap with another context is refused ($out)"
else fail "unwrap with another context is refused" "exit $rc: $out"; fi
check "rotate app-e2e" in_ct hostkms rotate app-e2e
printf '%s' "$secret" | check "wrap under the new version (v2)" \
    in_ct hostkms wrap app-e2e --context "$context" --out "$work/v2.ct"
expect_eq "the v1 ciphertext still unwraps after rotate" "$secret" \
    "$(in_ct hostkms unwrap --context "$context" --in "$work/v1.ct" 2>&1 || true)"
check "revoke app-e2e --version 1" in_ct hostkms revoke app-e2e --version 1
out=$(in_ct hostkms unwrap --context "$context" --in "$work/v1.ct" 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 1 ] && grep -qi revoked <<<"$out"; then pass "the v1 ciphertext no longer unwraps: $out"
else fail "the v1 ciphertext no longer unwraps (\"revoked\")" "exit $rc: $out"; fi
expect_eq "the v2 ciphertext still unwraps" "$secret" \
    "$(in_ct hostkms unwrap --context "$context" --in "$work/v2.ct" 2>&1 || true)"
check "create-key app-second" in_ct hostkms create-key app-second

# Grants: a granted user may wrap/unwrap, a user without a grant may not.
in_ct chmod 0755 "$work"
printf '%s' "$secret" | check "e2e-app (granted) wraps" \
    as_user e2e-app hostkms wrap app-e2e --context "$context" --out /tmp/app.ct
expect_eq "e2e-app (granted) unwraps" "$secret" \
    "$(as_user e2e-app hostkms unwrap --context "$context" --in /tmp/app.ct 2>&1 || true)"
out=$(printf x | as_user e2e-other hostkms wrap app-e2e 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 1 ] && grep -qi "permission denied" <<<"$out"; then pass "e2e-other (no grant) is denied: $out"
else fail "e2e-other (no grant) is denied (exit 1, \"permission denied\")" "exit $rc: $out"; fi
out=$(as_user e2e-other hostkms describe app-e2e 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 1 ]; then pass "e2e-other may not describe app-e2e before the reload"
else fail "e2e-other may not describe app-e2e before the reload" "exit $rc: $out"; fi

# The same from services: clients that run as units of this systemd, so the
# daemon learns their unit (HOSTKMS_PEER_UNIT) from their cgroup.
in_unit() {
    local unit=$1 user=$2
    shift 2
    in_ct systemd-run --quiet --wait --pipe --collect --unit="$unit" -p User="$user" "$@"
}
printf '%s' "$secret" | check "e2e-app wraps from unit e2e-app-client.service" \
    in_unit e2e-app-client e2e-app hostkms wrap app-e2e --context "$context" --out /tmp/unit.ct
expect_eq "e2e-app unwraps from unit e2e-app-unwrap.service" "$secret" \
    "$(in_unit e2e-app-unwrap e2e-app hostkms unwrap --context "$context" --in /tmp/unit.ct 2>&1 || true)"
out=$(printf x | in_unit e2e-other-client e2e-other hostkms wrap app-e2e 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 1 ] && grep -qi "permission denied" <<<"$out"; then pass "e2e-other is denied from unit e2e-other-client.service (exit 1)"
else fail "e2e-other is denied from unit e2e-other-client.service" "exit $rc: $out"; fi

# Restart keeps every key: both keys, both versions, the v2 ciphertext.
main_pid=$(in_ct systemctl show -p MainPID --value hostkms.service)
check "systemctl restart hostkms" in_ct systemctl restart hostkms
new_pid=$(in_ct systemctl show -p MainPID --value hostkms.service)
if [ "$new_pid" != "$main_pid" ] && [ "$new_pid" != 0 ]; then pass "a new hostkmsd runs (pid $main_pid -> $new_pid)"
else fail "a new hostkmsd runs after restart" "MainPID $main_pid -> $new_pid"; fi
out=$(in_ct hostkms --json describe app-e2e 2>&1 || true)
if grep -q '"version": *1' <<<"$out" && grep -q '"version": *2' <<<"$out"; then
    pass "after restart, describe app-e2e shows versions 1 and 2"
else fail "after restart, describe app-e2e shows versions 1 and 2" "$out"; fi
out=$(in_ct hostkms list 2>&1 || true)
if grep -q app-e2e <<<"$out" && grep -q app-second <<<"$out"; then pass "after restart, list shows both keys"
else fail "after restart, list shows both keys" "$out"; fi
expect_eq "after restart, the v2 ciphertext unwraps" "$secret" \
    "$(in_ct hostkms unwrap --context "$context" --in "$work/v2.ct" 2>&1 || true)"
expect_eq "after restart, e2e-app's ciphertext unwraps" "$secret" \
    "$(as_user e2e-app hostkms unwrap --context "$context" --in /tmp/app.ct 2>&1 || true)"

# Reload (SIGHUP): a new grant applies without a restart.
in_ct sh -c "cat >>/etc/hostkms/config.toml" <<'CONFIG'

[[grant]]
keys = ["app-e2e"]
users = ["e2e-other"]
ops = ["describe"]
CONFIG
main_pid=$(in_ct systemctl show -p MainPID --value hostkms.service)
check "systemctl reload hostkms" in_ct systemctl reload hostkms
expect_eq "hostkms.service stays active after reload" active \
    "$(in_ct systemctl is-active hostkms.service 2>&1 || true)"
new_pid=$(in_ct systemctl show -p MainPID --value hostkms.service)
if [ "$new_pid" = "$main_pid" ] && [ "$new_pid" != 0 ]; then pass "the same hostkmsd serves after reload (pid $new_pid)"
else fail "the same hostkmsd serves after reload" "MainPID $main_pid -> $new_pid"; fi
check "after reload, e2e-other may describe app-e2e (new grant)" as_user e2e-other hostkms describe app-e2e
out=$(printf x | as_user e2e-other hostkms wrap app-e2e 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 1 ] && grep -qi "permission denied" <<<"$out"; then pass "after reload, e2e-other still may not wrap"
else fail "after reload, e2e-other still may not wrap" "exit $rc: $out"; fi

# --- The audit trail in journald ------------------------------------------------
MSG_OK=54ef972d04c94c4d82e172b091a4204e
MSG_DENIED=ae4499d0098646569a7eaef5c366b9e7
MSG_FAILED=4fecfa9090084923a2dbb30f5ea9d08a
MSG_READY=3246e65abb4b411ab335889564bd4421
MSG_STOPPED=03cf281e477a40c99f3000e0beee0cae
MSG_RELOADED=c8d9b9f895044afdab796f25231a8980
# journald may still be writing the last entries.
in_ct journalctl --sync 2>/dev/null || true

# journal_has DESCRIPTION MATCH... : the latest hostkms.service entry that
# matches every FIELD=VALUE carries every field named in $need. Every request
# event has BASE; a version only when one was resolved (not on a denial); a
# unit only when the peer runs in one (the root and setpriv clients above
# are nsenter'ed processes outside every unit of the container).
BASE="MESSAGE_ID HOSTKMS_OP HOSTKMS_KEY HOSTKMS_RESULT HOSTKMS_PEER_UID HOSTKMS_PEER_PID"
need=$BASE
journal_entry() {
    in_ct journalctl -u hostkms.service --no-pager -o json "$@" 2>/dev/null | tail -n 1
}
journal_has() {
    local description=$1 entry field missing=""
    shift
    entry=$(journal_entry "$@")
    if [ -z "$entry" ]; then fail "$description" "no journal entry with $*"; return; fi
    for field in $need; do
        grep -q "\"$field\":" <<<"$entry" || missing="$missing $field"
    done
    if [ -z "$missing" ]; then pass "$description"
    else fail "$description" "entry lacks$missing: $entry"; fi
}
need="$BASE HOSTKMS_KEY_VERSION"
journal_has "journal: create of app-e2e, ok, PRIORITY 6" \
    MESSAGE_ID=$MSG_OK HOSTKMS_OP=create HOSTKMS_KEY=app-e2e HOSTKMS_KEY_VERSION=1 HOSTKMS_RESULT=ok PRIORITY=6
journal_has "journal: wrap of app-e2e by root (uid 0), ok" \
    MESSAGE_ID=$MSG_OK HOSTKMS_OP=wrap HOSTKMS_KEY=app-e2e HOSTKMS_RESULT=ok HOSTKMS_PEER_UID=0
journal_has "journal: rotate of app-e2e to version 2, ok" \
    MESSAGE_ID=$MSG_OK HOSTKMS_OP=rotate HOSTKMS_KEY=app-e2e HOSTKMS_KEY_VERSION=2
journal_has "journal: revoke of app-e2e version 1, ok" \
    MESSAGE_ID=$MSG_OK HOSTKMS_OP=revoke HOSTKMS_KEY=app-e2e HOSTKMS_KEY_VERSION=1
journal_has "journal: unwrap of the revoked version 1 failed (version-revoked), PRIORITY 3" \
    MESSAGE_ID=$MSG_FAILED HOSTKMS_OP=unwrap HOSTKMS_RESULT=error HOSTKMS_KEY_VERSION=1 \
    HOSTKMS_ERROR=version-revoked PRIORITY=3
need="$BASE HOSTKMS_KEY_VERSION HOSTKMS_PEER_UNIT"
journal_has "journal: every field on wrap by e2e-app (uid $app_uid) in e2e-app-client.service" \
    MESSAGE_ID=$MSG_OK HOSTKMS_OP=wrap HOSTKMS_KEY=app-e2e HOSTKMS_RESULT=ok \
    HOSTKMS_PEER_UID="$app_uid" HOSTKMS_PEER_UNIT=e2e-app-client.service PRIORITY=6
journal_has "journal: unwrap by e2e-app in e2e-app-unwrap.service, ok" \
    MESSAGE_ID=$MSG_OK HOSTKMS_OP=unwrap HOSTKMS_RESULT=ok HOSTKMS_PEER_UNIT=e2e-app-unwrap.service
need=$BASE
journal_has "journal: wrap by e2e-other (uid $other_uid) denied, PRIORITY 4" \
    MESSAGE_ID=$MSG_DENIED HOSTKMS_OP=wrap HOSTKMS_RESULT=denied HOSTKMS_PEER_UID="$other_uid" PRIORITY=4
need="$BASE HOSTKMS_PEER_UNIT"
journal_has "journal: the denial in e2e-other-client.service names the unit" \
    MESSAGE_ID=$MSG_DENIED HOSTKMS_RESULT=denied HOSTKMS_PEER_UNIT=e2e-other-client.service PRIORITY=4
entry=$(journal_entry MESSAGE_ID=$MSG_DENIED HOSTKMS_PEER_UID="$other_uid")
if grep -q '"HOSTKMS_ERROR":"permission-denied"' <<<"$entry"; then pass "journal: the denial says HOSTKMS_ERROR=permission-denied"
else fail "journal: the denial says HOSTKMS_ERROR=permission-denied" "${entry:-no entry}"; fi
# The catalog the package installs explains every MESSAGE_ID of the contract
# (`journalctl -x` shows it next to the entry).
# The ids are the constants of src/audit.rs (scripts/check-units.sh checks
# that the catalog file holds exactly those), so a new event cannot be missed.
missing=""
ids=$(grep -o '"[0-9a-f]\{32\}"' "$top/src/audit.rs" | tr -d '"')
count=$(echo "$ids" | wc -l)
for id in $ids; do
    in_ct journalctl --list-catalog "$id" 2>/dev/null | grep -q . || missing="$missing $id"
done
if [ -z "$missing" ]; then pass "journal: the installed catalog has all $count MESSAGE_IDs"
else fail "journal: the installed catalog has all $count MESSAGE_IDs" "missing:$missing"; fi
out=$(in_ct journalctl -x -u hostkms.service --no-pager -n 1 MESSAGE_ID=$MSG_DENIED 2>&1 || true)
if grep -q '^ *░░ Subject:\|^-- Subject:' <<<"$out"; then pass "journal: journalctl -x explains a denial"
else fail "journal: journalctl -x explains a denial" "$out"; fi

for id in $MSG_READY $MSG_STOPPED $MSG_RELOADED; do
    case $id in
        "$MSG_READY") what="daemon ready" ;;
        "$MSG_STOPPED") what="daemon stopped (by the restart)" ;;
        *) what="configuration reloaded" ;;
    esac
    if [ -n "$(journal_entry MESSAGE_ID="$id")" ]; then pass "journal: $what ($id)"
    else fail "journal: $what ($id)" "no hostkms.service entry with MESSAGE_ID=$id"; fi
done

# No secret in any log: the whole journal (every unit, every field), in the
# export format, holds neither the secret, nor its base64, nor a ciphertext.
in_ct journalctl --no-pager -o export >"$run/journal.export" 2>/dev/null || true
v2_ct=$(in_ct cat "$work/v2.ct" 2>/dev/null || true)
leaks=""
grep -aqF -- "$secret" "$run/journal.export" && leaks="$leaks the-secret"
grep -aqF -- "$secret_b64" "$run/journal.export" && leaks="$leaks its-base64"
[ -n "$v2_ct" ] && grep -aqF -- "$v2_ct" "$run/journal.export" && leaks="$leaks a-ciphertext"
if [ ! -s "$run/journal.export" ]; then fail "the journal holds no secret" "the journal export is empty"
elif [ -z "$leaks" ]; then pass "the journal ($(wc -c <"$run/journal.export") bytes) holds no secret, base64 or ciphertext"
else fail "the journal holds no secret" "found:$leaks"; fi

# --- systemd credentials (LoadCredential= from hostkms-credentials.socket) ---------
# A unit with LoadCredential=dbpass:/run/hostkms/credentials.sock gets the
# exact secret in $CREDENTIALS_DIRECTORY; a second unit whose file is a copy
# of the first's (bound to the first unit's name) fails to start instead of
# starting with an empty credential; both are in the journal with the unit,
# the id and the process systemd connected from; rotating the key and
# re-encrypting the credential works without touching the unit file.
# The MESSAGE_IDs are the daemon's (src/audit.rs), read by name.
MSG_CRED_DELIVERED=$(sed -n 's/.*CREDENTIAL_DELIVERED: &str = "\([0-9a-f]\{32\}\)".*/\1/p' "$top/src/audit.rs")
MSG_CRED_REFUSED=$(sed -n 's/.*CREDENTIAL_REFUSED: &str = "\([0-9a-f]\{32\}\)".*/\1/p' "$top/src/audit.rs")
if [ -n "$MSG_CRED_DELIVERED" ] && [ -n "$MSG_CRED_REFUSED" ]; then
    pass "credential MESSAGE_IDs: delivered $MSG_CRED_DELIVERED, refused $MSG_CRED_REFUSED"
else fail "src/audit.rs names CREDENTIAL_DELIVERED and CREDENTIAL_REFUSED" "found '$MSG_CRED_DELIVERED' '$MSG_CRED_REFUSED'"; fi
expect_eq "hostkms-credentials.socket is enabled by the package" enabled \
    "$(in_ct systemctl is-enabled hostkms-credentials.socket 2>&1 || true)"
expect_eq "hostkms-credentials.socket is active" active \
    "$(in_ct systemctl is-active hostkms-credentials.socket 2>&1 || true)"
expect_eq "/run/hostkms/credentials.sock is root's, mode 0600" "socket root:root 600" \
    "$(in_ct stat -c '%F %U:%G %a' /run/hostkms/credentials.sock 2>&1 || true)"
expect_eq "the package made /etc/hostkms/credentials 0700 hostkms:hostkms" "directory hostkms:hostkms 700" \
    "$(in_ct stat -c '%F %U:%G %a' /etc/hostkms/credentials 2>&1 || true)"
# The credential is raw bytes: a non-ASCII byte and a trailing newline too
# (--in reads them as they are).
cred_secret="e2e-cred-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
# shellcheck disable=SC2016
in_ct sh -c 'printf "%s\303\251 two words\n" "$1" >/root/e2e/cred-secret && chmod 0600 /root/e2e/cred-secret' sh "$cred_secret"
check "create-key cred-e2e" in_ct hostkms create-key cred-e2e
in_ct sh -c "cat >>/etc/hostkms/config.toml" <<'CONFIG'

[[grant]]
units = ["hkcred-a.service", "hkcred-b.service"]
keys = ["cred-e2e"]
ops = ["credential"]
CONFIG
check "reload with the credential grant" in_ct systemctl reload hostkms
out=$(in_ct hostkms credential encrypt --unit hkcred-a.service --name dbpass --key cred-e2e --in /root/e2e/cred-secret 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 0 ] && grep -qx '    LoadCredential=dbpass:/run/hostkms/credentials.sock' <<<"$out"; then
    pass "hostkms credential encrypt (v1) prints the LoadCredential= line"
else fail "hostkms credential encrypt --unit hkcred-a.service --name dbpass" "exit $rc: $out"; fi
expect_eq "the credential file is hostkms's, 0600" "regular file hostkms:hostkms 600" \
    "$(in_ct stat -c '%F %U:%G %a' /etc/hostkms/credentials/hkcred-a.service/dbpass 2>&1 || true)"
for unit in hkcred-a hkcred-b; do
    # TimeoutStartSec: a backstop only. A refused credential is never an
    # empty one: hostkmsd sends one byte more than systemd takes, so the
    # unit should fail at once; a oneshot's start timeout is otherwise
    # infinite.
    in_ct sh -c "cat >/etc/systemd/system/$unit.service" <<UNIT
[Unit]
Description=hostkms e2e: a service reading its credential

[Service]
Type=oneshot
RemainAfterExit=no
TimeoutStartSec=20s
LoadCredential=dbpass:/run/hostkms/credentials.sock
ExecStart=/bin/sh -c 'cat "\$CREDENTIALS_DIRECTORY/dbpass" > /run/$unit.out'
UNIT
done
in_ct install -d -m 0700 -o hostkms -g hostkms /etc/hostkms/credentials/hkcred-b.service
in_ct cp -p /etc/hostkms/credentials/hkcred-a.service/dbpass /etc/hostkms/credentials/hkcred-b.service/dbpass
in_ct rm -f /run/hkcred-a.out /run/hkcred-b.out
in_ct systemctl daemon-reload
check "systemctl start hkcred-a (LoadCredential= from hostkms)" in_ct systemctl start hkcred-a.service
want_sum=$(in_ct sh -c 'sha256sum </root/e2e/cred-secret' | cut -d' ' -f1)
# (Never the digest of nothing: an empty credential must not compare equal.)
if [ -z "$want_sum" ] || [ "$want_sum" = e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 ]; then
    fail "the secret file in the container holds the secret" "sha256 '$want_sum'"
fi
expect_eq "hkcred-a saw the exact secret bytes (non-ASCII, trailing newline)" "$want_sum" \
    "$(in_ct sh -c 'sha256sum </run/hkcred-a.out' 2>&1 | cut -d' ' -f1)"
t=$(date +%s.%N)
out=$(in_ct systemctl start hkcred-b.service 2>&1) && rc=0 || rc=$?
took=$(elapsed "$t")
if [ "$rc" -ne 0 ]; then pass "systemctl start hkcred-b fails (a copy of hkcred-a's credential) after $took s: exit $rc"
else fail "systemctl start hkcred-b fails (a copy of hkcred-a's credential)" "it started: $out"; fi
expect_eq "hkcred-b is failed" failed "$(in_ct systemctl is-failed hkcred-b.service 2>&1 || true)"
result=$(in_ct systemctl show -p Result --value hkcred-b.service 2>&1 || true)
say "hkcred-b failed in $took s: Result=$result; systemd said:"
in_ct journalctl -u hkcred-b.service --no-pager -o cat 2>&1 | sed 's/^/e2e:     /' || true
if [ "$result" != timeout ] && awk -v s="$took" 'BEGIN { exit !(s < 15) }'; then
    pass "hkcred-b failed at once ($took s, Result=$result), not at its 20 s start timeout"
else fail "hkcred-b fails at once, not at its 20 s start timeout" "took $took s, Result=$result"; fi
if in_ct test -e /run/hkcred-b.out; then fail "hkcred-b never ran: /run/hkcred-b.out does not exist" "it exists ($(in_ct stat -c %s /run/hkcred-b.out) bytes)"
else pass "hkcred-b never ran: /run/hkcred-b.out does not exist (no empty credential)"; fi
in_ct journalctl --sync 2>/dev/null || true
need="$BASE HOSTKMS_KEY_VERSION HOSTKMS_PEER_UNIT HOSTKMS_PEER_COMM HOSTKMS_CREDENTIAL_UNIT HOSTKMS_CREDENTIAL"
journal_has "journal: credential dbpass delivered to hkcred-a.service (v1)" \
    MESSAGE_ID="$MSG_CRED_DELIVERED" HOSTKMS_CREDENTIAL_UNIT=hkcred-a.service HOSTKMS_CREDENTIAL=dbpass \
    HOSTKMS_KEY=cred-e2e HOSTKMS_KEY_VERSION=1 HOSTKMS_PEER_UNIT=hkcred-a.service HOSTKMS_PEER_UID=0
entry=$(journal_entry MESSAGE_ID="$MSG_CRED_DELIVERED" HOSTKMS_CREDENTIAL_UNIT=hkcred-a.service)
peer_pid=$(sed -n 's/.*"HOSTKMS_PEER_PID":"\([0-9]*\)".*/\1/p' <<<"$entry")
peer_comm=$(sed -n 's/.*"HOSTKMS_PEER_COMM":"\([^"]*\)".*/\1/p' <<<"$entry")
peer_unit=$(sed -n 's/.*"HOSTKMS_PEER_UNIT":"\([^"]*\)".*/\1/p' <<<"$entry")
say "systemd connected for hkcred-a from pid ${peer_pid:-?} comm ${peer_comm:-?} in ${peer_unit:-?}"
if [ -n "$peer_pid" ] && [ "$peer_pid" != 1 ] && [ "$peer_unit" = hkcred-a.service ]; then
    pass "the credential's peer is not PID 1 but pid $peer_pid ($peer_comm) in hkcred-a.service's cgroup"
else fail "the credential's peer is not PID 1 and is in hkcred-a.service's cgroup" "pid '$peer_pid' comm '$peer_comm' unit '$peer_unit'"; fi
need="$BASE HOSTKMS_CREDENTIAL_UNIT HOSTKMS_CREDENTIAL HOSTKMS_PEER_UNIT"
journal_has "journal: credential dbpass refused to hkcred-b.service" \
    MESSAGE_ID="$MSG_CRED_REFUSED" HOSTKMS_CREDENTIAL_UNIT=hkcred-b.service HOSTKMS_CREDENTIAL=dbpass \
    HOSTKMS_PEER_UNIT=hkcred-b.service
say "the refusal: $(journal_entry MESSAGE_ID="$MSG_CRED_REFUSED" HOSTKMS_CREDENTIAL_UNIT=hkcred-b.service |
    sed -n 's/.*"MESSAGE":"\([^"]*\)".*/\1/p')"
# Rotation, then re-encryption, without touching the unit file.
check "rotate cred-e2e" in_ct hostkms rotate cred-e2e
in_ct rm -f /run/hkcred-a.out
check "after rotate, systemctl restart hkcred-a" in_ct systemctl restart hkcred-a.service
expect_eq "after rotate, hkcred-a still gets the secret (v1 credential)" "$want_sum" \
    "$(in_ct sh -c 'sha256sum </run/hkcred-a.out' 2>&1 | cut -d' ' -f1)"
out=$(in_ct hostkms --json credential encrypt --unit hkcred-a.service --name dbpass --key cred-e2e --in /root/e2e/cred-secret 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 0 ] && grep -q '"version":2' <<<"$out" && grep -q '"replaced":true' <<<"$out"; then
    pass "credential encrypt again: version 2, replaced"
else fail "credential encrypt again: version 2, replaced" "exit $rc: $out"; fi
in_ct rm -f /run/hkcred-a.out
check "after re-encryption, systemctl restart hkcred-a" in_ct systemctl restart hkcred-a.service
expect_eq "after re-encryption, hkcred-a gets the secret" "$want_sum" \
    "$(in_ct sh -c 'sha256sum </run/hkcred-a.out' 2>&1 | cut -d' ' -f1)"
in_ct journalctl --sync 2>/dev/null || true
need="$BASE HOSTKMS_KEY_VERSION HOSTKMS_CREDENTIAL_UNIT HOSTKMS_CREDENTIAL"
journal_has "journal: the delivery after re-encryption is of version 2" \
    MESSAGE_ID="$MSG_CRED_DELIVERED" HOSTKMS_CREDENTIAL_UNIT=hkcred-a.service HOSTKMS_KEY_VERSION=2
out=$(in_ct hostkms credential list --unit hkcred-a.service 2>&1 || true)
if grep -q 'dbpass.*key cred-e2e v2' <<<"$out"; then pass "credential list shows hkcred-a's dbpass under cred-e2e v2"
else fail "credential list shows hkcred-a's dbpass under cred-e2e v2" "$out"; fi
# The secret is in no log.
in_ct journalctl --no-pager -o export >"$run/journal-cred.export" 2>/dev/null || true
if grep -aqF -- "$cred_secret" "$run/journal-cred.export"; then fail "the journal holds no credential" "found the secret"
else pass "the journal holds no credential secret"; fi

# --- Stop, then power off -----------------------------------------------------------
check "systemctl stop hostkms.service" in_ct systemctl stop hostkms.service
props=$(in_ct systemctl show -p Result -p ExecMainCode -p ExecMainStatus hostkms.service)
if grep -qx Result=success <<<"$props" && grep -qx ExecMainStatus=0 <<<"$props"; then
    pass "hostkmsd ended cleanly (Result=success, ExecMainStatus=0)"
else fail "hostkmsd ended cleanly (Result=success, ExecMainStatus=0)" "$(tr '\n' ' ' <<<"$props")"; fi
out=$(in_ct journalctl -u hostkms.service --no-pager -o cat | grep -i watchdog || true)
if [ -z "$out" ]; then pass "no watchdog timeout in the journal"
else fail "no watchdog timeout in the journal" "$out"; fi
expect_eq "hostkms.socket still listens after the service stopped" active \
    "$(in_ct systemctl is-active hostkms.socket 2>&1 || true)"
check "the socket path survives the stop and activates the service again" in_ct hostkms ping

# --- The watchdog: a wedged daemon is killed and restarted -------------------------
# A test drop-in shortens the packaged 30 s watchdog to 2 s; SIGSTOP wedges
# the daemon (its serving loop can no longer ping), systemd must abort it
# and Restart=on-failure start a new one that serves the same keys.
in_ct mkdir -p /run/systemd/system/hostkms.service.d
in_ct sh -c 'printf "[Service]\nWatchdogSec=2s\nTimeoutAbortSec=5s\n" >/run/systemd/system/hostkms.service.d/e2e-watchdog.conf'
in_ct systemctl daemon-reload
check "restart with a 2 s watchdog" in_ct systemctl restart hostkms.service
wedged=$(in_ct systemctl show -p MainPID --value hostkms.service)
# First the healthy case: 5 s, more than twice the timeout, on pings alone.
sleep 5
expect_eq "a healthy hostkmsd outlives a 2 s watchdog (5 s on its pings)" "$wedged" \
    "$(in_ct systemctl show -p MainPID --value hostkms.service)"
# sh's kill: the minimal root has no /bin/kill (procps). The single quotes
# are meant: "$1" is expanded by the container's sh, which gets the pid as
# its first argument.
# shellcheck disable=SC2016
in_ct sh -c 'kill -STOP "$1"' sh "$wedged"
t=$(date +%s.%N)
new_pid=$wedged
for _ in $(seq 1 200); do
    new_pid=$(in_ct systemctl show -p MainPID --value hostkms.service)
    if [ "$new_pid" != "$wedged" ] && [ "$new_pid" != 0 ] &&
        [ "$(in_ct systemctl is-active hostkms.service 2>/dev/null || true)" = active ]; then
        break
    fi
    sleep 0.1
done
if [ "$new_pid" != "$wedged" ] && [ "$new_pid" != 0 ]; then
    pass "the watchdog replaced the wedged hostkmsd (pid $wedged -> $new_pid) in $(elapsed "$t") s"
else fail "the watchdog replaced the wedged hostkmsd" "MainPID still $new_pid"; fi
out=$(in_ct journalctl -u hostkms.service --no-pager -o cat | grep -i "watchdog timeout" || true)
if [ -n "$out" ]; then pass "systemd logged the watchdog timeout"
else fail "systemd logged the watchdog timeout" "no 'Watchdog timeout' in the unit's journal"; fi
check "the restarted hostkmsd still has app-e2e" in_ct hostkms describe app-e2e
in_ct rm -f /run/systemd/system/hostkms.service.d/e2e-watchdog.conf
in_ct systemctl daemon-reload

# --- A root key sealed to a PIN: the daemon starts locked ---------------------------
# A fresh state dir with [root_key] pin = true: the daemon is active but
# locked (READY=1, STATUS says so), refuses key operations, and the first
# `hostkms unlock` sets the PIN; after a restart it is locked again until
# the PIN is given. The original state dir is put back afterwards.
MSG_LOCKED=eb043bc953384ab2aff654d8d03e5ba9
MSG_UNLOCK=dab12fd4462e41349a815e8d0b3a2d7c
check "stop hostkms for the PIN checks" in_ct systemctl stop hostkms.service
in_ct mv /var/lib/hostkms /var/lib/hostkms.e2e-saved
in_ct sh -c 'cp /etc/hostkms/config.toml /root/e2e/config.saved && printf "\n[root_key]\npin = true\n" >>/etc/hostkms/config.toml'
# The single quotes are meant: the container's sh expands "$1".
# shellcheck disable=SC2016
in_ct sh -c 'printf "e2e-pin-%s\n" "$1" >/root/e2e/pin' sh "$RANDOM$RANDOM"
check "with pin = true, hostkms status starts the service" in_ct hostkms status
expect_eq "a locked hostkmsd is active" active "$(in_ct systemctl is-active hostkms.service 2>&1 || true)"
out=$(in_ct systemctl status --no-pager hostkms.service 2>&1 || true)
if grep -q "Status: \"locked: run hostkms unlock" <<<"$out"; then pass "systemctl status shows the locked status line"
else fail "systemctl status shows the locked status line" "$out"; fi
out=$(in_ct hostkms create-key app-locked 2>&1) && rc=0 || rc=$?
if [ "$rc" -ne 0 ] && grep -qi "locked" <<<"$out"; then pass "a locked daemon refuses create-key, naming the lock"
else fail "a locked daemon refuses create-key, naming the lock" "exit $rc: $out"; fi
check "the first hostkms unlock sets the PIN" in_ct hostkms unlock --pin-file /root/e2e/pin
check "after unlock, create-key app-locked" in_ct hostkms create-key app-locked
check "restart the PIN-sealed hostkmsd" in_ct systemctl restart hostkms.service
out=$(in_ct systemctl show -p StatusText --value hostkms.service 2>&1 || true)
if grep -q "^locked: run hostkms unlock" <<<"$out"; then pass "after a restart it is locked again: $out"
else fail "after a restart it is locked again" "$out"; fi
check "hostkms unlock with the PIN" in_ct hostkms unlock --pin-file /root/e2e/pin
check "the unlocked daemon has app-locked" in_ct hostkms describe app-locked
in_ct journalctl --sync 2>/dev/null || true
need="MESSAGE_ID HOSTKMS_RESULT HOSTKMS_PEER_UID"
journal_has "journal: the unlock attempt is audited" MESSAGE_ID="$MSG_UNLOCK" HOSTKMS_RESULT=unlocked
need="MESSAGE_ID HOSTKMS_LOCK_REASON"
journal_has "journal: the locked start is audited" MESSAGE_ID="$MSG_LOCKED"
in_ct journalctl --no-pager -o export >"$run/journal-pin.export" 2>/dev/null || true
pin=$(in_ct cat /root/e2e/pin)
if grep -aqF -- "$pin" "$run/journal-pin.export"; then fail "the journal holds no PIN" "found the PIN"
else pass "the journal holds no PIN"; fi
check "stop hostkms to put the first state dir back" in_ct systemctl stop hostkms.service
in_ct rm -rf /var/lib/hostkms
in_ct mv /var/lib/hostkms.e2e-saved /var/lib/hostkms
in_ct cp /root/e2e/config.saved /etc/hostkms/config.toml
check "the first state dir serves again" in_ct hostkms describe app-e2e

t=$(date +%s.%N)
in_ct systemctl poweroff >/dev/null 2>&1 || true
rc=""
for _ in $(seq 1 300); do
    if ! kill -0 "$nspawn_pid" 2>/dev/null; then
        wait "$nspawn_pid" && rc=0 || rc=$?
        break
    fi
    sleep 0.1
done
if [ "$rc" = 0 ]; then
    pass "systemctl poweroff: the container stopped in $(elapsed "$t") s"
    nspawn_pid=""
else
    fail "systemctl poweroff stops the container within 30 s" "nspawn ${rc:+exited $rc}${rc:-still running}"
fi

if [ "$failures" -gt 0 ]; then
    diagnose
    die "$failures check(s) failed"
fi
say "all checks passed in $(elapsed "$t0") s"
