# mosaicod container image: slim Python, non-root, `mosaicod` entry point, /healthz health check.
#   docker build -t mosaicod:local .
#   docker run --rm mosaicod:local --help
# The package is installed exactly as CI installs it (`pip install .` from the repository root).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 mosaico \
 && useradd --system --uid 10001 --gid mosaico --home-dir /var/lib/mosaicod --create-home \
            --shell /usr/sbin/nologin mosaico

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mosaicod ./mosaicod
COPY migrations ./migrations
RUN pip install . && cd / && rm -rf /src

USER mosaico
WORKDIR /var/lib/mosaicod

# Inside the container the Flight port listens on every interface of the container's own network;
# what reaches the host is decided by the published ports (docker-compose.yml binds 127.0.0.1).
# /healthz + /metrics stay on the container's loopback unless MOSAICOD_METRICS_HOST is set.
ENV MOSAICOD_HOST=0.0.0.0 \
    MOSAICOD_PORT=6726 \
    MOSAICOD_METRICS_PORT=9726 \
    MOSAICOD_DATA_DIR=/var/lib/mosaicod \
    MOSAICOD_LOG_FORMAT=json

EXPOSE 6726 9726

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('MOSAICOD_METRICS_PORT', '9726'); sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % port, timeout=4).status == 200 else 1)"]

ENTRYPOINT ["mosaicod"]
CMD ["serve"]
