# syntax=docker/dockerfile:1
# Build: docker build -t rtgate .
# Run:   docker run -p 8080:8080 rtgate
# Operations (config, user, health check, compose stack): docs/operations.md
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY proto ./proto
COPY examples ./examples
COPY clients/js/dist ./clients/js/dist
RUN cargo build --release --locked --bin rtgate

FROM debian:bookworm-slim
# Versions come from the pinned Debian release (bookworm), not per package.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 rtgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home rtgate
COPY --from=build /src/target/release/rtgate /usr/local/bin/rtgate
COPY gateway.toml /etc/rtgate/gateway.toml
# Numeric, so runtimes can check it is not root (runAsNonRoot).
USER 10001:10001
ENV RTGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["rtgate", "--config", "/etc/rtgate/gateway.toml"]
