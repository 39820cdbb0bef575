#!/usr/bin/env bash
# Benchmark shared operator state on etcd (issue 14): a 3-member etcd cluster
# and three metalbondd servers on it (all on loopback, fresh data, stopped by
# their PIDs), then mbbench --scenario inject: routes injected through server
# A's API reaching subscribers of all three servers.
#
#   scripts/bench-etcd.sh [--no-build] [--metalbondd PATH] [--out DIR] [--redb] [--etcd-members N]
#                         [--max-txn-ops N] [-- MBBENCH-ARGS...]
#
# Defaults: K = 1,000 single injections (--latency-samples; the time from the
# API call's return until every subscriber has the route, p50/p99/max), then
# N = 100,000 routes in one call (--routes), 2 subscribers per server
# (--subscribers). --redb runs one server with the default redb store instead
# (no etcd), for comparison; --etcd-members 1 runs a one-member etcd (on this
# 2-core machine three members compete with the servers for the CPU);
# --max-txn-ops N sets etcd's --max-txn-ops and the servers' store.etcd.max_txn_ops
# (default 1024, as OPERATIONS.md recommends; 128 is etcd's own default). Needs etcd and etcdctl (Debian: etcd-server,
# etcd-client). CARGO_TARGET_DIR is honoured (default: <repo>/target).

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BUILD=1
MBD=""
OUT=""
REDB=0
MEMBERS=3
MAXOPS=1024
MBARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --metalbondd) MBD=$2; shift ;;
        --out) OUT=$2; shift ;;
        --redb) REDB=1 ;;
        --etcd-members) MEMBERS=$2; shift ;;
        --max-txn-ops) MAXOPS=$2; shift ;;
        --) shift; MBARGS=("$@"); break ;;
        -h|--help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-etcd.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && cargo build --release -p metalbondd --bins)
fi
MBD=${MBD:-$TARGET/release/metalbondd}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

servers=3
store_toml=""
if [ -e "$OUT/etcd-m0" ] || [ -e "$OUT/server0-state" ]; then
    echo "bench-etcd.sh: $OUT holds an earlier run; give a new --out" >&2
    exit 2
fi
if [ "$REDB" = 0 ]; then
    command -v etcd >/dev/null || { echo "bench-etcd.sh: etcd is not installed (Debian: etcd-server)" >&2; exit 2; }
    cluster=""
    endpoints=()
    declare -a cport pport
    for i in $(seq 0 $((MEMBERS - 1))); do
        cport[$i]=$(free_port)
        pport[$i]=$(free_port)
        cluster+="${cluster:+,}m$i=http://127.0.0.1:${pport[$i]}"
        endpoints+=("\"http://127.0.0.1:${cport[$i]}\"")
    done
    for i in $(seq 0 $((MEMBERS - 1))); do
        etcd --name "m$i" --data-dir "$OUT/etcd-m$i" \
            --listen-client-urls "http://127.0.0.1:${cport[$i]}" \
            --advertise-client-urls "http://127.0.0.1:${cport[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${pport[$i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${pport[$i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token metalbondd-bench \
            --logger zap --log-outputs stderr ${MAXOPS:+--max-txn-ops $MAXOPS} ${ETCD_ARGS:-} >"$OUT/etcd-m$i.log" 2>&1 &
        pids+=($!)
    done
    eps=$(IFS=,; echo "${endpoints[*]}")
    healthy=0
    for _ in $(seq 100); do
        if ETCDCTL_API=3 etcdctl --endpoints="${eps//\"/}" --dial-timeout=1s --command-timeout=1s \
            endpoint health >/dev/null 2>&1; then healthy=1; break; fi
        sleep 0.1
    done
    if [ "$healthy" = 0 ]; then
        echo "bench-etcd.sh: the etcd cluster did not become healthy (logs: $OUT/etcd-m*.log)" >&2
        exit 2
    fi
    store_toml=$(printf '[store]\nbackend = "etcd"\n\n[store.etcd]\nendpoints = [%s]\nprefix = "/metalbondd-bench/"\n%b' "$eps" "${MAXOPS:+max_txn_ops = $MAXOPS\n}")
else
    servers=1
fi

watch=()
for i in $(seq 0 $((servers - 1))); do
    port=$(free_port)
    cat >"$OUT/server$i.toml" <<EOF
[server]
listen = ["127.0.0.1:$port"]

$store_toml
EOF
    "$MBD" server --config "$OUT/server$i.toml" --api-socket "$OUT/server$i.sock" \
        --state-dir "$OUT/server$i-state" >"$OUT/server$i.log" 2>&1 &
    pids+=($!)
    watch+=(--watch-server "127.0.0.1:$port")
    for _ in $(seq 100); do [ -S "$OUT/server$i.sock" ] && break; sleep 0.1; done
done
for flag in --routes --latency-samples --subscribers; do
    case " ${MBARGS[*]} " in *" $flag "*) ;; *)
        case $flag in
            --routes) MBARGS+=(--routes 100000) ;;
            --latency-samples) MBARGS+=(--latency-samples 1000) ;;
            --subscribers) MBARGS+=(--subscribers 2) ;;
        esac ;;
    esac
done
cpu() { # CPU seconds (user + system) of PID so far
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}
rc=0
"$TARGET/release/mbbench" --server "${watch[1]}" --scenario inject --vni 100 \
    --inject-api "$OUT/server0.sock" "${watch[@]}" "${MBARGS[@]}" || rc=$?
line="CPU seconds over the whole run:"
for p in "${pids[@]}"; do
    line+=" $(tr -d '\0' < "/proc/$p/comm" 2>/dev/null)[$p]=$(cpu "$p")"
done
echo "$line" >&2
exit $rc
