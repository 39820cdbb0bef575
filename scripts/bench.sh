#!/usr/bin/env bash
# Benchmark a MetalBond route server with mbbench.
#
#   scripts/bench.sh [options] SERVER [-- MBBENCH-ARGS...]
#
# SERVER is one of
#   metalbondd   $TARGET/release/metalbondd server --listen [::1]:PORT --keepalive 5
#   rustbond     $TARGET/release/rustbond-server --listen [::1]:PORT --keepalive 5
#   go           $GO_METALBOND server --listen [::1]:PORT --keepalive 5 (the Go reference;
#                GO_METALBOND defaults to /work/cache/go-metalbond/metalbond; build it with
#                ../shared/go-reference/build.sh)
#   both         metalbondd, then rustbond, each on a fresh process, then a side-by-side table
#   all          metalbondd, rustbond, then go
#
# Options:
#   --no-build          do not run `cargo build --release --features interop --bins`
#   --port PORT         listen port (default: a free random port)
#   --out DIR           keep server logs and JSON results here (default: a new temp dir)
#   --keepalive S       server keepalive interval (default 5)
#   --metalbondd PATH   the metalbondd binary to run (default $TARGET/release/metalbondd),
#                       e.g. another branch's build for a before/after comparison
#   --label NAME        name of the metalbondd run in the table (default metalbondd)
#   --config FILE       give metalbondd this configuration file too (e.g.
#                       scripts/bench-policy.toml: a realistic peer policy)
#   --tls               metalbondd only: mbbench connects over TLS with a client
#                       certificate, to a `tls_listen` address (certificates made
#                       with openssl in OUT/tls; the config of --config is kept)
#   --nofile N          open-file limit for the server and mbbench (default 65536;
#                       the fleet scenario needs one per session)
#   --run-timeout S     stop mbbench (and report it) after S seconds (default: none;
#                       mbbench bounds each phase with --timeout anyway)
#
# Everything after `--` goes to mbbench (e.g. `--routes 1000000 --subscribers 100
# --scenario fanout`, or `--scenario fleet --hypervisors 5000`). --server,
# --server-pid, --label and --json are set by this script. The server is started
# fresh for each run (so bytes/route is meaningful), reached only on [::1], and
# stopped by its PID. The Go server logs every route; only the last 500 lines of
# its log are kept.
#
# Exit code: the worst mbbench exit code (1 = loss detected, 2 = setup failure).
#
# CARGO_TARGET_DIR is honoured (default: <repo>/target).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release
BUILD=1
PORT=""
OUT=""
KEEPALIVE=5
SERVER=""
MBARGS=()
MBD_BIN=""
MBD_LABEL=metalbondd
MBD_CONFIG=""
TLS=0
NOFILE=65536
RUN_TIMEOUT=""
GO_BIN=${GO_METALBOND:-/work/cache/go-metalbond/metalbond}

usage() { sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --port) PORT=$2; shift ;;
        --out) OUT=$2; shift ;;
        --keepalive) KEEPALIVE=$2; shift ;;
        --metalbondd) MBD_BIN=$2; shift ;;
        --label) MBD_LABEL=$2; shift ;;
        --config) MBD_CONFIG=$2; shift ;;
        --tls) TLS=1 ;;
        --nofile) NOFILE=$2; shift ;;
        --run-timeout) RUN_TIMEOUT=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; MBARGS=("$@"); break ;;
        -*) echo "bench.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) if [ -n "$SERVER" ]; then echo "bench.sh: one SERVER only" >&2; exit 2; fi
           SERVER=$1 ;;
    esac
    shift
done
case "$SERVER" in
    metalbondd|rustbond|go|both|all) ;;
    *) usage >&2; exit 2 ;;
esac
# One open file per fleet session, in the server and in mbbench.
ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

if [ "$BUILD" = 1 ]; then
    echo "== cargo build --release --features interop --bins (target $TARGET)" >&2
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --features interop --bins) >&2
fi
[ -x "$BIN/mbbench" ] || { echo "bench.sh: $BIN/mbbench missing" >&2; exit 2; }

if [ -z "$OUT" ]; then
    OUT=$(mktemp -d "${TMPDIR:-/tmp}/mbbench.XXXXXX")
fi
mkdir -p "$OUT"

# make_tls_config PORT: certificates (a CA, the server's for ::1, a client's)
# in OUT/tls and a configuration file with a TLS listener on [::1]:PORT, the
# file of --config appended; prints the file's path.
make_tls_config() {
    local dir="$OUT/tls" port=$1
    mkdir -p "$dir"
    if [ ! -f "$dir/client.pem" ]; then
        (
            cd "$dir"
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
                -subj /CN=bench-ca -keyout ca.key -out ca.pem
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench-server \
                -keyout server.key -out server.csr
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                -extfile <(printf 'subjectAltName=IP:::1,DNS:localhost') -out server.pem
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench-client \
                -keyout client.key -out client.csr
            openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                -extfile <(printf 'subjectAltName=DNS:bench-client\nextendedKeyUsage=clientAuth') \
                -out client.pem
        ) >/dev/null 2>&1 || { echo "bench.sh: openssl failed making certificates" >&2; exit 2; }
    fi
    {
        printf '[server]\ntls_listen = ["[::1]:%s"]\n\n[server.tls]\n' "$port"
        printf 'cert = "%s"\nkey = "%s"\nclient_ca = "%s"\n\n' "$dir/server.pem" "$dir/server.key" "$dir/ca.pem"
        [ -z "$MBD_CONFIG" ] || cat "$MBD_CONFIG"
    } >"$dir/metalbondd-$port.toml"
    echo "$dir/metalbondd-$port.toml"
}

port_in_use() { (exec 3<>"/dev/tcp/::1/$1") 2>/dev/null; }

pick_port() {
    if [ -n "$PORT" ]; then echo "$PORT"; return; fi
    local p
    for _ in $(seq 1 50); do
        # Below the ephemeral range (32768+ on Linux): a fleet run leaves
        # thousands of client sockets there (TIME_WAIT), and the next server
        # could not bind.
        p=$((10000 + RANDOM % 22000))
        if ! port_in_use "$p"; then echo "$p"; return; fi
    done
    echo "bench.sh: no free port found" >&2
    exit 2
}

SERVER_PID=""
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "bench.sh: server $SERVER_PID ignored SIGTERM for 10 s, sending SIGKILL" >&2
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# run_one NAME: start server NAME, run mbbench against it, stop it. Sets RC.
run_one() {
    local name=$1 port addr cmd state label=$1 tls_args=()
    port=$(pick_port)
    addr="[::1]:$port"
    case "$name" in
        metalbondd)
            label=$MBD_LABEL
            state="$OUT/$label.state"
            mkdir -p "$state"
            # With --tls the plaintext listener moves to another port and
            # mbbench talks TLS to $addr.
            local listen=$addr
            [ "$TLS" = 1 ] && listen="[::1]:$(PORT="" pick_port)"
            cmd=("${MBD_BIN:-$BIN/metalbondd}" server --listen "$listen" --keepalive "$KEEPALIVE"
                 --api-socket "$state/api.sock" --state-dir "$state")
            if [ "$TLS" = 1 ]; then
                cmd+=(--config "$(make_tls_config "$port")")
                tls_args=(--tls-ca "$OUT/tls/ca.pem" --tls-cert "$OUT/tls/client.pem"
                          --tls-key "$OUT/tls/client.key")
            elif [ -n "$MBD_CONFIG" ]; then
                cmd+=(--config "$MBD_CONFIG")
            fi ;;
        rustbond) cmd=("$BIN/rustbond-server" --listen "$addr" --keepalive "$KEEPALIVE") ;;
        go) cmd=("$GO_BIN" server --listen "$addr" --keepalive "$KEEPALIVE") ;;
    esac
    name=$label
    [ -x "${cmd[0]}" ] || { echo "bench.sh: ${cmd[0]} missing" >&2; RC=2; return; }
    echo "== $name: ${cmd[*]} (log $OUT/$name.log)" >&2
    if [ "$1" = go ]; then
        "${cmd[@]}" > >(tail -n 500 >"$OUT/$name.log") 2>&1 &
    else
        "${cmd[@]}" >"$OUT/$name.log" 2>&1 &
    fi
    SERVER_PID=$!
    local ok=0
    for _ in $(seq 1 200); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
        if port_in_use "$port"; then ok=1; break; fi
        sleep 0.05
    done
    if [ "$ok" != 1 ]; then
        echo "bench.sh: $name did not accept connections on $addr; log:" >&2
        tail -20 "$OUT/$name.log" >&2
        stop_server
        RC=2
        return
    fi
    echo "== $name: pid $SERVER_PID listening on $addr" >&2
    set +e
    local limit=()
    [ -n "$RUN_TIMEOUT" ] && limit=(timeout --signal=TERM --kill-after=10 "$RUN_TIMEOUT")
    "${limit[@]}" "$BIN/mbbench" --server "$addr" --server-pid "$SERVER_PID" --label "$name" --json \
        "${tls_args[@]}" "${MBARGS[@]}" >"$OUT/$name.json"
    RC=$?
    set -e
    if [ "$RC" = 124 ]; then
        echo "bench.sh: mbbench stopped after --run-timeout $RUN_TIMEOUT s" >&2
        RC=1
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "bench.sh: $name exited during the run (crash?); log:" >&2
        tail -20 "$OUT/$name.log" >&2
    fi
    stop_server
    echo "== $name: mbbench exit code $RC, results in $OUT/$name.json" >&2
    LAST_NAME=$name
}

compare() {
    # Side-by-side table of the JSON results given as arguments.
    python3 - "$@" <<'EOF'
import json, sys
runs = []
for path in sys.argv[1:]:
    rows = {}
    label = path.rsplit('/', 1)[-1].removesuffix('.json')
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith('{'):
                o = json.loads(line)
                rows[o['scenario']] = o
                label = o.get('label') or label
    runs.append((label, rows))
metrics = [
    ('elapsed_s', 'elapsed s', '{:.3f}'),
    ('routes_per_s', 'routes/s', '{:,.0f}'),
    ('deliveries_per_s', 'deliveries/s', '{:,.0f}'),
    ('p50_us', 'p50 us', '{:.0f}'), ('p90_us', 'p90 us', '{:.0f}'),
    ('p99_us', 'p99 us', '{:.0f}'), ('max_us', 'max us', '{:.0f}'),
    ('completed', 'completed', 'BOOL'),
    ('loss', 'loss', '{:.0f}'), ('duplicates', 'duplicates', '{:.0f}'),
    ('closed_by_server', 'closed by server', '{:.0f}'),
    ('keepalive_late', 'late keepalives', '{:.0f}'),
    ('server_cpu_s', 'server CPU s', '{:.2f}'),
    ('server_kernel_cpu_s', '  of it in the kernel s', '{:.2f}'),
    ('client_cpu_s', 'mbbench CPU s', '{:.2f}'),
    ('server_rss_after_kib', 'server RSS after MiB', 'MIB'),
    ('server_hwm_after_kib', 'server peak RSS MiB', 'MIB'),
    ('bytes_per_route', 'bytes/route', '{:.0f}'),
    # fleet phases
    ('tail_s', 'converged after last s', '{:.3f}'),
    ('adds', 'ADDs received', '{:,.0f}'), ('removes', 'REMOVEs received', '{:,.0f}'),
    ('missing', 'missing', '{:.0f}'), ('extra', 'extra', '{:.0f}'),
    ('stale', 'stale', '{:.0f}'), ('own_after_reconnect', 'own after reconnect', '{:.0f}'),
    ('sessions_down', 'sessions down', '{:.0f}'),
    ('keepalive_timeouts', 'keepalive timeouts', '{:.0f}'),
    ('keepalive_echo_max_ms', 'keepalive echo max ms', '{:.0f}'),
    ('resets', 'resets by server', '{:.0f}'),
    ('connect_failures', 'connect failures', '{:.0f}'),
]
scenarios = []
for _, rows in runs:
    for s in rows:
        if s not in scenarios:
            scenarios.append(s)
w = 22
print()
print('{:<15} {:<24}'.format('scenario', 'metric') + ''.join('{:>{w}}'.format(l, w=w) for l, _ in runs))
for s in scenarios:
    for key, title, fmt in metrics:
        vals = []
        for _, rows in runs:
            v = rows.get(s, {}).get(key)
            if v is None:
                vals.append('-')
            elif fmt == 'BOOL':
                vals.append('yes' if v else 'NO')
            elif fmt == 'MIB':
                vals.append('{:.1f}'.format(v / 1024))
            else:
                vals.append(fmt.format(v))
        if all(v == '-' for v in vals):
            continue
        print('{:<15} {:<24}'.format(s, title) + ''.join('{:>{w}}'.format(v, w=w) for v in vals))
    print()
EOF
}

WORST=0
RESULTS=()
case "$SERVER" in
    both) NAMES=(metalbondd rustbond) ;;
    all) NAMES=(metalbondd rustbond go) ;;
    *) NAMES=("$SERVER") ;;
esac
for name in "${NAMES[@]}"; do
    RC=0
    LAST_NAME=$name
    run_one "$name"
    [ "$RC" -gt "$WORST" ] && WORST=$RC
    [ -s "$OUT/$LAST_NAME.json" ] && RESULTS+=("$OUT/$LAST_NAME.json")
done

if [ "${#RESULTS[@]}" -gt 0 ]; then
    if command -v python3 >/dev/null; then
        compare "${RESULTS[@]}"
    else
        cat "${RESULTS[@]}"
    fi
fi
echo "results: $OUT" >&2
exit "$WORST"
