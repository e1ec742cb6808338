#!/bin/bash
# `make bench`: throughput and latency of a release hostkmsd against a
# private swtpm, measured with `hostkms bench` (32-byte data keys), first
# with the daemon at the same CPU priority as its clients, then at nice -10
# (what a unit's Nice= or CPUWeight= gives a key service on a busy host).
# Prints one JSON line per run. Timings on a shared machine are noisy:
# compare against the Ping floor measured in the same run, never across runs.
#
#   BENCH_DURATION=10            seconds per phase (Ping, then the operation)
#   BENCH_RUNS="unwrap:16 ..."   operation[/key type]:connections, e.g.
#                                sign/ml-dsa-65:16 (hostkms bench --type)
#   BENCH_NICE="0 -10"           daemon nice values to run with
#   BENCH_BATCH=100              also measure wrap-batch/unwrap-batch of this
#                                many items for the wrap and unwrap runs
#                                (hostkms bench --batch), as a ratio to the
#                                single requests of the same run
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
duration=${BENCH_DURATION:-10}
runs=${BENCH_RUNS:-"unwrap:16 unwrap:1 wrap:16 datakey:16 unwrap:64 sign/ed25519:16 sign/ecdsa-p256:16 sign/ml-dsa-65:16 verify/ed25519:16 verify/ecdsa-p256:16 verify/ml-dsa-65:16 mac/hmac-sha256:16"}
nices=${BENCH_NICE:-"0 -10"}
batch=${BENCH_BATCH:-}
work=$(mktemp -d /tmp/hostkms-bench.XXXXXX)
chmod 700 "$work"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=""
for candidate in $(seq 24210 2 24400); do
    if ! port_in_use "$candidate" && ! port_in_use $((candidate + 1)); then port=$candidate; break; fi
done
[ -n "$port" ] || { echo "no free loopback port pair" >&2; exit 1; }

mkdir "$work/tpm"
swtpm socket --tpm2 --tpmstate "dir=$work/tpm" \
    --server "type=tcp,port=$port,bindaddr=127.0.0.1" \
    --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
    --flags not-need-init,startup-clear >"$work/swtpm.log" 2>&1 &
swtpm_pid=$!
daemon_pid=""
stop_daemon() {
    if [ -n "$daemon_pid" ]; then
        kill "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
        daemon_pid=""
    fi
}
cleanup() {
    stop_daemon
    kill "$swtpm_pid" 2>/dev/null || true
    wait "$swtpm_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 100); do port_in_use "$port" && break; sleep 0.05; done

cat >"$work/config.toml" <<CONFIG
socket = "$work/hostkms.sock"
state_dir = "$work/state"
tcti = "swtpm:host=127.0.0.1,port=$port"
CONFIG
hostkms="$top/target/release/hostkms --socket $work/hostkms.sock"

echo "# $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ), ${duration} s per phase"
for nice in $nices; do
    HOSTKMS_LOG=warn HOSTKMS_LOG_TARGET=stderr nice -n "$nice" "$top/target/release/hostkmsd" --config "$work/config.toml" &
    daemon_pid=$!
    for _ in $(seq 1 200); do $hostkms ping >/dev/null 2>&1 && break; sleep 0.05; done
    for run in $runs; do
        op=${run%%:*} connections=${run##*:}
        type_args=()
        if [[ $op == */* ]]; then
            type_args=(--type "${op#*/}")
            op=${op%%/*}
        fi
        if [[ -n $batch && ( $op == wrap || $op == unwrap ) ]]; then
            type_args+=(--batch "$batch")
        fi
        echo -n "{\"daemon_nice\":$nice,"
        $hostkms --json bench --op "$op" "${type_args[@]}" --connections "$connections" --duration "$duration" --size 32 | sed 's/^{//'
    done
    echo "# daemon RSS after the runs at nice $nice: $(awk '/VmRSS/ {print $2, $3}' "/proc/$daemon_pid/status")"
    stop_daemon
done
