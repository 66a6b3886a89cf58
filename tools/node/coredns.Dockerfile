# CoreDNS for the real node of `make e2e-node`: built static from its Go module (Makefile
# COREDNS_VERSION), copied to target/node/ by `make node-images`. scripts/oci-image.py --base none.
FROM scratch
COPY target/node/coredns /coredns
USER 65532:65532
ENTRYPOINT ["/coredns"]
