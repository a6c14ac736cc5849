# syntax=docker/dockerfile:1
# Build stage: dependencies are compiled in their own layer (from Cargo.toml and Cargo.lock
# with placeholder sources), so changing the code does not rebuild them.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src examples benches tests/it \
    && echo 'fn main() {}' > src/main.rs \
    && echo '' > src/lib.rs \
    && echo 'fn main() {}' > examples/propagation.rs \
    && echo 'fn main() {}' > examples/origin_bench.rs \
    && echo 'fn main() {}' > examples/snapshot_bench.rs \
    && echo '' > tests/it/main.rs \
    && cargo build --release --locked --bin tiercache \
    && rm -rf src examples tests
COPY src ./src
COPY examples ./examples
COPY tests ./tests
# Touch the sources so cargo rebuilds the crate itself over the placeholder.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin tiercache

# Runtime stage: a slim Debian with CA certificates (rediss:// and https origins), a non-root
# user, the binary and the documented defaults.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin tiercache \
    && mkdir -p /app/config /data \
    && chown tiercache:tiercache /data
COPY --from=build /src/target/release/tiercache /usr/local/bin/tiercache
COPY config/default.toml /app/config/default.toml
WORKDIR /app
USER tiercache
VOLUME ["/data"]
EXPOSE 4000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["tiercache", "healthcheck"]
ENTRYPOINT ["tiercache"]
