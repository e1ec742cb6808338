#!/bin/bash
# `make run`: a private swtpm under target/dev/ and hostkmsd in the
# foreground, its socket at target/dev/hostkms.sock. Ctrl-C stops both.
# The swtpm state persists in target/dev/tpm, so the root key (sealed in
# target/dev/state) survives between runs, as on a real machine.
# target/dev/config.extra.toml, when present, is appended to the config
# (e.g. a [root_key] table). `kill $(cat target/dev/hostkmsd.pid)` stops
# only hostkmsd, which is started again on the same swtpm (whose PCRs a
# restart of swtpm would reset).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
dev="$top/target/dev"
mkdir -p "$dev/tpm"
chmod 700 "$dev"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port=""
for candidate in $(seq 23210 2 23400); do
    if ! port_in_use "$candidate" && ! port_in_use $((candidate + 1)); then
        port=$candidate
        break
    fi
done
[ -n "$port" ] || { echo "no free loopback port pair between 23210 and 23401" >&2; exit 1; }

swtpm socket --tpm2 --tpmstate "dir=$dev/tpm" \
    --server "type=tcp,port=$port,bindaddr=127.0.0.1" \
    --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
    --flags not-need-init,startup-clear >"$dev/swtpm.log" 2>&1 &
swtpm_pid=$!
export TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=$port" TSS2_LOG=all+none
# TPM2_Shutdown before stopping swtpm: a TPM stopped without it counts an
# unorderly shutdown against its dictionary-attack limit. Only the EXIT trap
# below calls it, which shellcheck 0.9 does not see (it reports the body as
# unreachable).
# shellcheck disable=SC2317
stop_tpm() {
    tpm2_shutdown --clear >/dev/null 2>&1 || true
    kill "$swtpm_pid" 2>/dev/null || true
    wait "$swtpm_pid" 2>/dev/null || true
}
trap stop_tpm EXIT

for _ in $(seq 1 100); do
    port_in_use "$port" && break
    kill -0 "$swtpm_pid" 2>/dev/null || { cat "$dev/swtpm.log" >&2; exit 1; }
    sleep 0.05
done
# This development TPM's lockout authorization is empty: clear any lockout
# left by earlier runs that ended uncleanly.
tpm2_dictionarylockout --clear-lockout >/dev/null 2>&1 || true

cat >"$dev/config.toml" <<CONFIG
# Written by scripts/dev-run.sh for \`make run\`.
socket = "$dev/hostkms.sock"
state_dir = "$dev/state"
tcti = "swtpm:host=127.0.0.1,port=$port"
# You are the admin of your development daemon (root always is).
admin_groups = ["$(id -gn)"]
CONFIG
if [ -f "$dev/config.extra.toml" ]; then
    { echo; echo "# From target/dev/config.extra.toml:"; cat "$dev/config.extra.toml"; } >>"$dev/config.toml"
fi

cat <<MSG
swtpm is listening on 127.0.0.1:$port (state in target/dev/tpm).
hostkmsd is starting with target/dev/config.toml. In another terminal:

    export HOSTKMS_SOCKET=target/dev/hostkms.sock
    target/debug/hostkms status
    target/debug/hostkms create-key demo
    echo -n 'my secret' | target/debug/hostkms wrap demo --context app=demo > demo.ct
    target/debug/hostkms unwrap --context app=demo --in demo.ct

Ctrl-C stops hostkmsd and swtpm; \`kill \$(cat target/dev/hostkmsd.pid)\`
stops only hostkmsd, which then starts again on the same TPM.
MSG

# Not exec: the EXIT trap must still stop swtpm when hostkmsd ends. A
# hostkmsd stopped by SIGTERM alone (exit 0, no Ctrl-C here) starts again.
stopping=""
# A background job of a script ignores SIGINT: Ctrl-C is passed on as SIGTERM.
# shellcheck disable=SC2317
on_interrupt() {
    stopping=1
    kill -TERM "$daemon_pid" 2>/dev/null || true
}
daemon_pid=""
trap on_interrupt INT
while :; do
    # stderr even on a host whose journald listens: you are watching this terminal.
    HOSTKMS_LOG_TARGET=stderr "$top/target/debug/hostkmsd" --config "$dev/config.toml" &
    daemon_pid=$!
    echo "$daemon_pid" >"$dev/hostkmsd.pid"
    status=0
    # A trapped Ctrl-C interrupts wait; wait again for hostkmsd itself.
    while kill -0 "$daemon_pid" 2>/dev/null; do
        wait "$daemon_pid" && status=0 || status=$?
    done
    rm -f "$dev/hostkmsd.pid"
    if [ -n "$stopping" ] || [ "$status" -ne 0 ]; then
        break
    fi
    echo "hostkmsd stopped; starting it again on the same TPM (Ctrl-C stops both)"
done
exit "$status"
