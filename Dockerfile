# One image for herald's sidecar and control plane:
#   herald           (the entrypoint: the injected sidecar runs `herald sidecar`)
#   herald-injector  (the chart's Deployment runs it as its command)
# Build: docker build -t ghcr.io/herald-dev/herald:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin herald --bin herald-injector \
 && strip target/release/herald target/release/herald-injector

# distroless/cc: glibc and CA certificates, no shell; runs as nonroot (65532) like the chart asks.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/herald /src/target/release/herald-injector /usr/local/bin/
USER 65532:65532
EXPOSE 8250 9250 8443
ENTRYPOINT ["/usr/local/bin/herald"]
