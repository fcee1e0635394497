# syntax=docker/dockerfile:1
#
# scopegate container image.
#
#   docker build -t ghcr.io/scopegate/scopegate:0.1.0 .
#
# The config is not baked in: mount it at /etc/scopegate/scopegate.yaml
# (in Kubernetes: the scopegate-config ConfigMap, see deploy/README.md).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# BuildKit cache mounts keep the crates.io downloads and the target dir
# between builds; the binary is copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/scopegate /out/scopegate

# glibc + libgcc + CA certificates, no shell, runs as nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="scopegate" \
      org.opencontainers.image.description="OAuth 2.0 bearer-token gateway (reverse proxy) driven by a YAML route-scope map" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/scopegate /usr/local/bin/scopegate
# Numeric, so Kubernetes can verify runAsNonRoot.
USER 65532:65532
# 8080: proxy, 9090: admin (/metrics /healthz /readyz).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/scopegate"]
CMD ["run", "--config", "/etc/scopegate/scopegate.yaml"]
