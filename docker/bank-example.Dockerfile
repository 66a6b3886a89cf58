# The example application (examples/bank/app.py) on the Python SDK (sdk/python): standard library only.
# Build from the repository root: docker build -f docker/bank-example.Dockerfile .
FROM python:3.12-slim
COPY sdk/python/aether_actors /app/aether_actors
COPY examples/bank/app.py /app/app.py
# A read-only root filesystem (the chart sets one): no bytecode files written.
ENV PYTHONDONTWRITEBYTECODE=1
# 65534 is `nobody`; numeric, so a kubelet can check runAsNonRoot (chart: example.app.runAsUser).
USER 65534:65534
ENTRYPOINT ["python3", "/app/app.py"]
