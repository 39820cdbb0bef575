#!/usr/bin/env bash
# Checks the systemd files in systemd/ without installing anything:
#   1. `systemd-analyze verify` of the three units, on copies whose
#      /usr/bin/metalbondd is the freshly built binary (or a stub): any
#      message about our units (unknown key, bad value, missing unit or
#      command) fails;
#   2. the sysusers.d entry creates the user and group the units run as
#      (systemd-sysusers into a scratch root);
#   3. the example configs the units load pass `metalbondd check-config`,
#      and their API socket, state directory and tunnel device match the
#      units' RuntimeDirectory=, StateDirectory= and METALBONDD_TUN;
#   4. `systemd-analyze security --offline=true` of the server and client
#      units: prints the exposure and fails above MAX_EXPOSURE_SERVER /
#      MAX_EXPOSURE_CLIENT (tenths: 11 means 1.1; measured with systemd 252,
#      docs/OPERATIONS.md).
#
# Needs systemd-analyze and systemd-sysusers (Debian: the `systemd` package;
# systemd need not be running) and `ip` (iproute2, resolved by verify for the
# tunnel unit). The binary: METALBONDD_BIN, else the newest of
# $CARGO_TARGET_DIR/{release,debug}/metalbondd (default target/), else a stub
# (then the configs are not checked, and that is said).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE_SERVER=${MAX_EXPOSURE_SERVER:-11}
MAX_EXPOSURE_CLIENT=${MAX_EXPOSURE_CLIENT:-15}
units=(metalbondd-server.service metalbondd-client.service metalbondd-tunnel.service)

for tool in systemd-analyze systemd-sysusers; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "check-units: $tool not found (Debian: apt-get install systemd)" >&2
    exit 1
  fi
done

fail=0
problem() { echo "check-units: FAIL: $*" >&2; fail=1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- the binary --------------------------------------------------------------
bin=${METALBONDD_BIN:-}
if [ -z "$bin" ]; then
  target=${CARGO_TARGET_DIR:-target}
  for cand in "$target/release/metalbondd" "$target/debug/metalbondd"; do
    if [ -x "$cand" ] && { [ -z "$bin" ] || [ "$cand" -nt "$bin" ]; }; then
      bin=$cand
    fi
  done
fi
if [ -n "$bin" ]; then
  bin=$(realpath "$bin")
  echo "== binary: $bin"
else
  mkdir -p "$work/bin"
  bin=$work/bin/metalbondd
  printf '#!/bin/sh\nexit 0\n' >"$bin"
  chmod +x "$bin"
  echo "== binary: none built (set METALBONDD_BIN or run cargo build); a stub stands in and the configs are NOT checked"
fi

# --- 1. systemd-analyze verify -------------------------------------------------
echo "== systemd-analyze verify ${units[*]}"
mkdir -p "$work/units"
for u in "${units[@]}"; do
  sed "s#/usr/bin/metalbondd\\b#$bin#g" "systemd/$u" >"$work/units/$u"
done
set +e
out=$(cd "$work/units" && systemd-analyze verify --man=no "${units[@]/#/./}" 2>&1)
rc=$?
set -e
ours=$(grep -E 'metalbondd-(server|client|tunnel)\.service' <<<"$out" || true)
others=$(grep -vE 'metalbondd-(server|client|tunnel)\.service' <<<"$out" | grep -v '^$' || true)
if [ -n "$others" ]; then
  echo "   (messages about other units, not ours, ignored:)"
  sed 's/^/   | /' <<<"$others"
fi
if [ -n "$ours" ] || [ "$rc" -ne 0 ]; then
  sed 's/^/   | /' <<<"$ours"
  problem "systemd-analyze verify (exit $rc) reported the lines above"
else
  echo "   ok"
fi

# --- 2. sysusers ---------------------------------------------------------------
echo "== systemd-sysusers systemd/metalbondd.sysusers"
mkdir -p "$work/root/etc" "$work/root/usr/lib/sysusers.d"
cp systemd/metalbondd.sysusers "$work/root/usr/lib/sysusers.d/metalbondd.conf"
if ! systemd-sysusers --root="$work/root" metalbondd.conf >"$work/sysusers.log" 2>&1; then
  sed 's/^/   | /' "$work/sysusers.log"
  problem "systemd-sysusers rejected systemd/metalbondd.sysusers"
fi
for u in metalbondd-server.service metalbondd-client.service; do
  for key in User Group; do
    name=$(sed -n "s/^$key=//p" "systemd/$u")
    db=$([ "$key" = User ] && echo passwd || echo group)
    if ! grep -q "^$name:" "$work/root/etc/$db" 2>/dev/null; then
      problem "$u: $key=$name is not created by systemd/metalbondd.sysusers"
    fi
  done
done
[ "$fail" -eq 0 ] && echo "   ok: $(cut -d: -f1,3,4,6,7 "$work/root/etc/passwd")"

# --- 3. the example configs ------------------------------------------------------
# The value of `key = "..."` in [section] of a TOML file (flat files only).
toml_get() {
  awk -v sec="[$2]" -v key="$3" '
    /^\[/ { in_sec = ($0 == sec) }
    in_sec && $1 == key && $2 == "=" { v = $3; gsub(/"/, "", v); print v; exit }
  ' "$1"
}
unit_get() { sed -n "s/^$2=//p" "systemd/$1" | tail -n 1; }

echo "== example configs of the units"
for role in server client; do
  u=metalbondd-$role.service
  conf=$(unit_get "$u" ExecStart | grep -o '/etc/metalbondd/[a-z]*\.toml')
  example=examples/$(basename "$conf")
  if [ ! -f "$example" ]; then
    problem "$u loads $conf, but there is no $example"
    continue
  fi
  socket=$(toml_get "$example" api socket)
  want_socket=/run/$(unit_get "$u" RuntimeDirectory)/api.sock
  [ "$socket" = "$want_socket" ] ||
    problem "$example: api.socket is '$socket', $u's RuntimeDirectory= gives $want_socket"
  dir=$(toml_get "$example" state dir)
  want_dir=/var/lib/$(unit_get "$u" StateDirectory)
  [ "$dir" = "$want_dir" ] ||
    problem "$example: state.dir is '$dir', $u's StateDirectory= gives $want_dir"
  if [ "$bin" != "$work/bin/metalbondd" ]; then
    if ! msg=$("$bin" check-config "$example" 2>&1); then
      problem "$msg"
    fi
  fi
done
tun=$(toml_get examples/client.toml client tun)
unit_tun=$(unit_get metalbondd-tunnel.service Environment | grep -o 'METALBONDD_TUN=[^ ]*' | cut -d= -f2)
env_tun=$(sed -n 's/^METALBONDD_TUN=//p' systemd/metalbondd-tunnel.env)
[ "$tun" = "$unit_tun" ] && [ "$tun" = "$env_tun" ] ||
  problem "tunnel device: examples/client.toml tun='$tun', metalbondd-tunnel.service '$unit_tun', metalbondd-tunnel.env '$env_tun'"
[ "$fail" -eq 0 ] && echo "   ok"

# --- 4. security exposure ------------------------------------------------------------
for role in server client; do
  u=metalbondd-$role.service
  max=$([ "$role" = server ] && echo "$MAX_EXPOSURE_SERVER" || echo "$MAX_EXPOSURE_CLIENT")
  echo "== systemd-analyze security --offline=true $u (at most $((max / 10)).$((max % 10)))"
  set +e
  out=$(cd "$work/units" && systemd-analyze security --offline=true --threshold="$max" "./$u" 2>&1)
  rc=$?
  set -e
  if [ "${VERBOSE:-0}" = 1 ]; then
    sed 's/^/   /' <<<"$out"
  else
    # What is not locked down, and the overall level.
    grep -E '^(✗|- )|Overall exposure' <<<"$out" | sed 's/^/   /' || true
  fi
  [ "$rc" -eq 0 ] || problem "$u: exposure above $((max / 10)).$((max % 10)) (or systemd-analyze failed, exit $rc)"
done

if [ "$fail" -ne 0 ]; then
  echo "check-units: failed" >&2
  exit 1
fi
echo "check-units: ok"
