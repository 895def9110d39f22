# syntax=docker/dockerfile:1
# Build: docker build -t rtgate .
# Run:   docker run -p 8080:8080 rtgate
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY proto ./proto
COPY examples ./examples
RUN cargo build --release --locked --bin rtgate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home rtgate
COPY --from=build /src/target/release/rtgate /usr/local/bin/rtgate
COPY gateway.toml /etc/rtgate/gateway.toml
USER rtgate
ENV RTGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["rtgate", "--config", "/etc/rtgate/gateway.toml"]
