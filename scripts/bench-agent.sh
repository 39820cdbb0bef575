#!/usr/bin/env bash
# Benchmark the hypervisor agent (`metalbondd client`) as a local service:
# mbbench --scenario agent against a fresh metalbondd server and a fresh
# metalbondd client connected to it (both on [::1], stopped by their PIDs).
#
#   scripts/bench-agent.sh [--no-build] [--metalbondd PATH] [--out DIR] [-- MBBENCH-ARGS...]
#
# Defaults: N = 1,000,000 received routes (--routes), K = 100,000 announcements
# (--announcements). Reports: time until N routes reach the agent's feed, the
# agent's memory per received route, the feed snapshot of N routes (3 times),
# K API announcements until a subscriber of the server has them, and their
# withdrawal. CARGO_TARGET_DIR is honoured (default: <repo>/target).

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BUILD=1
MBD=""
OUT=""
MBARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --metalbondd) MBD=$2; shift ;;
        --out) OUT=$2; shift ;;
        --) shift; MBARGS=("$@"); break ;;
        -h|--help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-agent.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && cargo build --release -p metalbondd --bins)
fi
MBD=${MBD:-$TARGET/release/metalbondd}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET6); s.bind(("::1",0)); print(s.getsockname()[1])')
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
"$MBD" server --listen "[::1]:$port" --api-socket "$OUT/server.sock" --state-dir "$OUT/server-state" \
    --log-format text >"$OUT/server.log" 2>&1 &
pids+=($!)
"$MBD" client --server "[::1]:$port" --subscribe 100 --api-socket "$OUT/client.sock" \
    --state-dir "$OUT/client-state" >"$OUT/client.log" 2>&1 &
client_pid=$!
pids+=("$client_pid")
for _ in $(seq 100); do [ -S "$OUT/client.sock" ] && grep -q "route server up" "$OUT/client.log" && break; sleep 0.1; done
case " ${MBARGS[*]} " in *" --routes "*) ;; *) MBARGS+=(--routes 1000000) ;; esac
"$TARGET/release/mbbench" --server "[::1]:$port" --scenario agent --vni 100 \
    --client-api "$OUT/client.sock" --client-pid "$client_pid" "${MBARGS[@]}"
