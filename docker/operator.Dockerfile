# Build from the repository root: docker build -f docker/operator.Dockerfile .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p aether-operator --bin aether-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/aether-operator /usr/local/bin/aether-operator
# 65532 is distroless's `nonroot`; numeric, so a kubelet can check runAsNonRoot (chart: operator.runAsUser).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/aether-operator"]
