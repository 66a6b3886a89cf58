# Build from the repository root: docker build -f docker/node.Dockerfile .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p aether-node --bin aether-node

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/aether-node /usr/local/bin/aether-node
# 65532 is distroless's `nonroot`; numeric, so a kubelet can check runAsNonRoot (chart: operator.runAsUser).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/aether-node"]
