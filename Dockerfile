# syntax=docker/dockerfile:1
#
# metalbondd container image: the route server, with mbctl for the health
# check. No protoc is needed: the .proto files are compiled by protox (pure
# Rust) in proto/build.rs.
#
#   docker build -t metalbondd .
#   docker run -d --name metalbondd -p 4711:4711 -p 127.0.0.1:9711:9711 \
#       -v metalbondd-state:/var/lib/metalbondd metalbondd
#   docker exec metalbondd mbctl status
#
# The default command listens on [::]:4711 (every address, IPv4 too) and serves
# metrics on 0.0.0.0:9711. Arguments replace it, e.g. `... metalbondd --config
# /etc/metalbondd/server.toml` with a file mounted there (examples/server.toml).
# See docs/OPERATIONS.md, section "Docker".

# --- build -------------------------------------------------------------------
# The toolchain CI uses; the workspace's rust-version (MSRV) is 1.85.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The cargo command is the one scripts/check-dockerfile.sh checks and CI runs.
# Debug info is stripped from the image's copies (symbols stay, for backtraces).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p metalbondd -p mbctl --bin metalbondd --bin mbctl \
    && mkdir -p /out \
    && objcopy --strip-debug target/release/metalbondd /out/metalbondd \
    && objcopy --strip-debug target/release/mbctl /out/mbctl

# --- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="metalbondd" \
      org.opencontainers.image.description="MetalBond route server" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed non-root uid/gid (65532, as distroless' "nonroot"), so that volumes
# and Kubernetes' runAsNonRoot work. State store and API socket directories
# are owned by it.
RUN groupadd --system --gid 65532 metalbondd \
    && useradd --system --uid 65532 --gid metalbondd --no-create-home \
       --home-dir /var/lib/metalbondd --shell /usr/sbin/nologin metalbondd \
    && install -d -o metalbondd -g metalbondd -m 0700 /var/lib/metalbondd \
    && install -d -o metalbondd -g metalbondd -m 0750 /run/metalbondd
COPY --from=build /out/metalbondd /out/mbctl /usr/bin/
USER 65532:65532
# MetalBond; Prometheus metrics (/metrics, /healthz).
EXPOSE 4711 9711
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["mbctl", "--socket", "/run/metalbondd/api.sock", "--timeout", "3", "health"]
ENTRYPOINT ["metalbondd"]
CMD ["server", "--listen", "[::]:4711", "--metrics", "0.0.0.0:9711", \
     "--api-socket", "/run/metalbondd/api.sock", "--state-dir", "/var/lib/metalbondd"]
