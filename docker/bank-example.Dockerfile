# The example application (examples/bank/app.py): Python, standard library only.
# Build from the repository root: docker build -f docker/bank-example.Dockerfile .
FROM python:3.12-slim
COPY examples/bank/app.py /app/app.py
USER nobody
ENTRYPOINT ["python3", "/app/app.py"]
