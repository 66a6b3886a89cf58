# Build from the repository root: docker build -f docker/node.Dockerfile .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p aether-node --bin aether-node

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/aether-node /usr/local/bin/aether-node
USER nonroot
ENTRYPOINT ["/usr/local/bin/aether-node"]
