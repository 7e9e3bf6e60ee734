# Multi-stage build: compile on the official Rust image, run on slim Debian as a non-root user.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied out of
# the cached target directory in the same step. Without the default features: the production
# binary has no `demo` or `simulate` command and does not contain the OpenCTI simulator.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bin opencti-stream-exporter \
 && install -D -m 0755 target/release/opencti-stream-exporter /out/opencti-stream-exporter \
 && strip /out/opencti-stream-exporter

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 exporter \
 && useradd --system --uid 10001 --gid exporter --home-dir /data --shell /usr/sbin/nologin exporter \
 && mkdir -p /data && chown exporter:exporter /data && chmod 0700 /data
# The CA certificates (for HTTPS to OpenCTI and S3) come from the build image, which has Debian's
# ca-certificates: the run stage needs no package source, and the image adds only the binary and
# this bundle to its base.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/opencti-stream-exporter /usr/local/bin/opencti-stream-exporter
ENV WAL_DIR=/data \
    CONNECTOR_TYPE=STREAM \
    CONNECTOR_METRICS_PORT=9095
VOLUME /data
WORKDIR /data
USER exporter:exporter
EXPOSE 9095
# The health check is the binary itself: no curl in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["opencti-stream-exporter", "healthcheck"]
# SIGTERM stops reading, finishes or abandons the upload in flight, and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["opencti-stream-exporter"]
CMD ["run"]
