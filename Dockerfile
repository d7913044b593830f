FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY streams streams
COPY workers workers
COPY modelvc modelvc
RUN pip install --no-cache-dir -e .
ENV MODELVC_WEB_HOST=0.0.0.0 MODELVC_DATA_DIR=/data/streams MODELVC_ARTIFACTS=/artifacts
EXPOSE 6066
CMD ["python", "-m", "streams"]
