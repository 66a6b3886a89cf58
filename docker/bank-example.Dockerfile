# The example application (examples/bank/app.py) on the Python SDK (sdk/python): standard library only.
# Build from the repository root: docker build -f docker/bank-example.Dockerfile .
# Debian 12's Python 3.11, as `make images` builds it from Debian packages.
FROM gcr.io/distroless/python3-debian12:nonroot
COPY sdk/python/aether_actors /app/aether_actors
COPY examples/bank/app.py /app/app.py
# A read-only root filesystem (the chart sets one): no bytecode files written.
ENV PYTHONDONTWRITEBYTECODE=1
# 65534 is `nobody`; numeric, so a kubelet can check runAsNonRoot (chart: example.app.runAsUser).
USER 65534:65534
ENTRYPOINT ["python3", "/app/app.py"]
