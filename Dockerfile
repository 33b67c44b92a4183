# syntax=docker/dockerfile:1
# The sluice broker (and sluicectl) in a small Debian image; docker-compose.yml runs three of
# them as one cluster.
#
#   docker build -t sluice .
#   docker run --rm -p 127.0.0.1:9092:9092 -v sluice-data:/var/lib/sluice sluice \
#       --advertise 127.0.0.1:9092          # one node, as `cargo run --release --bin sluice`
#
# Not built by CI (no Docker engine runs there): keep it in step with Cargo.toml
# (rust-version) and the crates' layout by hand.

# ---- build: the release binaries, with the registry and target dir cached between builds
FROM rust:1.95-trixie AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice-node -p sluice-cli \
 && mkdir -p /out \
 && cp target/release/sluice target/release/sluicectl /out/

# ---- run: the same Debian release as the build image (same glibc)
FROM debian:trixie-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/sluice sluice \
 && mkdir -p /var/lib/sluice \
 && chown sluice:sluice /var/lib/sluice
COPY --from=build /out/sluice /out/sluicectl /usr/local/bin/
USER sluice
# Every flag also reads an environment variable (README, "Node flags"). Inside a container the
# node listens on all interfaces; what it tells clients is --advertise (one node) or its own
# --peer entry (a cluster).
ENV SLUICE_DATA_DIR=/var/lib/sluice \
    SLUICE_LISTEN=0.0.0.0:9092
VOLUME ["/var/lib/sluice"]
# 9092: Kafka clients. 9093: node-to-node Raft traffic (cluster mode; the port is whatever
# the node's own --peer entry names, 9093 in docker-compose.yml).
EXPOSE 9092 9093
# SIGTERM shuts the node down cleanly (requests answered, logs flushed and checkpointed).
STOPSIGNAL SIGTERM
ENTRYPOINT ["sluice"]
