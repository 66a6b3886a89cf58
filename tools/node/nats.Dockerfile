# nats-server for the real node of `make e2e-node` (a user runs the NATS project's own image): the
# tools' nats-server (Makefile NATS_SERVER_VERSION), copied to target/node/ by `make node-images`,
# on the base of the Rust images (the libc it links). scripts/oci-image.py --base rust.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY target/node/nats-server /usr/local/bin/nats-server
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/nats-server"]
