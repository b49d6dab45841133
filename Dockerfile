# mosaicod container image: slim Python, the package installed with `pip install .` alone (no
# extras, no compilers), non-root, `mosaicod` entry point, health check on /healthz.
#   docker build -t mosaicod:local .
#   docker run -d --name mosaicod -p 127.0.0.1:6726:6726 -v mosaicod-data:/var/lib/mosaicod mosaicod:local
# `mosaicod serve` runs as PID 1 and handles SIGTERM (`docker stop`): it stops serving, stops the
# embedded PostgreSQL it started and exits (1-3 s); a stop requested while it is still starting is
# honoured as soon as it is up.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 mosaico \
 && useradd --system --uid 10001 --gid mosaico --home-dir /var/lib/mosaicod --create-home \
            --shell /usr/sbin/nologin mosaico

# Only what the package is built from (.dockerignore keeps everything else out of the context).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mosaicod ./mosaicod
COPY migrations ./migrations
RUN pip install . && cd / && rm -rf /src

USER mosaico
WORKDIR /var/lib/mosaicod
# Embedded PostgreSQL (postgres/) and local store (store/): keep them on a volume.
VOLUME ["/var/lib/mosaicod"]

# Inside the container the Flight port listens on every interface of the container's own network;
# what reaches the host is decided by the published ports (publish on 127.0.0.1, as compose does).
# /healthz + /metrics stay on the container's loopback unless MOSAICOD_METRICS_HOST is set.
ENV MOSAICOD_HOST=0.0.0.0 \
    MOSAICOD_PORT=6726 \
    MOSAICOD_METRICS_PORT=9726 \
    MOSAICOD_DATA_DIR=/var/lib/mosaicod \
    MOSAICOD_LOG_FORMAT=json

EXPOSE 6726 9726

# Exit 0 when /healthz answers 200, else 1 with one line saying why (connection refused, HTTP 503,
# timeout): an uncaught exception exits 1, and the excepthook prints it without a traceback.
# The same check serves `serve`, `cleanup` and `store-optimizer` (each serves /healthz on
# MOSAICOD_METRICS_PORT).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; sys.excepthook = lambda kind, exc, tb: print('unhealthy:', exc, file=sys.stderr); urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MOSAICOD_METRICS_PORT', '9726'), timeout=4); print('healthy')"]

ENTRYPOINT ["mosaicod"]
CMD ["serve"]
