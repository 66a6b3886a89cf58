# The pod sandbox image of the real node (registry.k8s.io/pause:3.10 as containerd names it):
# tools/node/pause.c, built static. `make e2e-node` builds it with scripts/oci-image.py --base none.
FROM scratch
COPY target/pause/pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
