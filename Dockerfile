# One image for herald's sidecar and control plane:
#   herald           (the entrypoint: the injected sidecar runs `herald sidecar`)
#   herald-controlplane  (the chart's Deployment runs it as its command)
#   herald-injector      (its name in earlier releases: a link to herald-controlplane)
# Build: docker build -t ghcr.io/herald-dev/herald:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin herald --bin herald-controlplane \
 && strip target/release/herald target/release/herald-controlplane \
 && mkdir /out && cp target/release/herald target/release/herald-controlplane /out/ \
 && ln -s herald-controlplane /out/herald-injector

# distroless/cc: glibc and CA certificates, no shell; runs as nonroot (65532) like the chart asks.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 8250 9250 8443
ENTRYPOINT ["/usr/local/bin/herald"]
