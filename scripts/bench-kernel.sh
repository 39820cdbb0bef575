#!/usr/bin/env bash
# Benchmark kernel route installation by a hypervisor agent (issue 12).
#
#   scripts/bench-kernel.sh [--client metalbondd|go] [--routes N] [--runs K]
#                           [--observe kernel|gauge]
#                           [--metalbondd PATH] [--mbbench PATH] [--go PATH]
#
# Creates a network namespace (lo up, veth mbt0/mbt1 up: mbt0 is the tunnel
# device, as in tests/netns_kernel.rs), starts inside it a metalbondd route
# server on [::1]:4711 and the agent under test with
# `--subscribe 100 --install-routes 100#100 --tun mbt0`, then runs
# `mbbench --scenario kernel` inside the namespace: an announcer announces N
# routes of VNI 100 (IPv4 /32, next hop 2001:db8::1), the time until all N
# are in table 100 (counted by netlink dumps, protocol 254) is "install";
# then it withdraws them, the time until none is left is "remove". K runs on
# the same agent. --observe kernel (the default for go) polls the table with
# netlink dumps (each dump of 100,000 routes takes ~0.3-0.6 s of kernel CPU,
# which the agent then lacks); --observe gauge (the default for metalbondd)
# polls the agent's metalbondd_kernel_routes{table="100"} gauge on its
# --metrics listener (updated at each netlink ACK) and checks the result with
# one dump. The namespace and the processes (stopped by PID) are
# removed at exit. Needs root and iproute2.
#
# --client go runs the Go reference (`metalbond client --server ...
# --subscribe 100 --install-routes 100#100 --tun mbt0`, default
# /work/go-ref/metalbond) instead of `metalbondd client`.
#
# CARGO_TARGET_DIR is honoured for the default binaries ($TARGET/release).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
MBD=$TARGET/release/metalbondd
MBB=$TARGET/release/mbbench
GO=/work/go-ref/metalbond
CLIENT=metalbondd
ROUTES=100000
RUNS=3
OBSERVE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --client) CLIENT=$2; shift ;;
        --routes) ROUTES=$2; shift ;;
        --runs) RUNS=$2; shift ;;
        --observe) OBSERVE=$2; shift ;;
        --metalbondd) MBD=$2; shift ;;
        --mbbench) MBB=$2; shift ;;
        --go) GO=$2; shift ;;
        -h|--help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-kernel.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
case "$CLIENT" in metalbondd|go) ;; *) echo "bench-kernel.sh: --client metalbondd|go" >&2; exit 2 ;; esac
if [ -z "$OBSERVE" ]; then
    if [ "$CLIENT" = go ]; then OBSERVE=kernel; else OBSERVE=gauge; fi
fi
case "$OBSERVE" in
    kernel) METRICS=() ;;
    gauge)
        [ "$CLIENT" = go ] && { echo "bench-kernel.sh: --observe gauge needs --client metalbondd" >&2; exit 2; }
        METRICS=(--metrics 127.0.0.1:9711) ;;
    *) echo "bench-kernel.sh: --observe kernel|gauge" >&2; exit 2 ;;
esac

NS=mbk-$$
DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    echo "logs in $DIR" >&2
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add mbt0 type veth peer name mbt1
ip -n "$NS" link set mbt0 up
ip -n "$NS" link set mbt1 up

ip netns exec "$NS" "$MBD" server --listen '[::1]:4711' --api-socket "$DIR/server.sock" \
    --state-dir "$DIR/server" >"$DIR/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    ip netns exec "$NS" bash -c 'exec 3<>/dev/tcp/::1/4711' 2>/dev/null && break
    sleep 0.1
done
if [ "$CLIENT" = go ]; then
    ip netns exec "$NS" "$GO" client --server '[::1]:4711' --subscribe 100 \
        --install-routes 100#100 --tun mbt0 >"$DIR/client.log" 2>&1 &
else
    ip netns exec "$NS" "$MBD" client --server '[::1]:4711' --subscribe 100 \
        --install-routes 100#100 --tun mbt0 --api-socket "$DIR/client.sock" \
        --state-dir "$DIR/client" "${METRICS[@]}" >"$DIR/client.log" 2>&1 &
fi
PIDS+=($!)
# The agent's SUBSCRIBE must reach the server before the routes are
# announced (else they arrive as the subscription dump, not as updates).
for _ in $(seq 100); do
    grep -qiE 'route server up|subscrib|connected' "$DIR/client.log" 2>/dev/null && break
    sleep 0.1
done
sleep 1
ip netns exec "$NS" "$MBB" --server '[::1]:4711' --scenario kernel --routes "$ROUTES" \
    --vni 100 --table 100 --tun mbt0 --runs "$RUNS" --timeout 120 --label "$CLIENT" --json "${METRICS[@]}"
