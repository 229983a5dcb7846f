# labelloop: CPU image. Build: docker build -t labelloop .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TORCH_HOME=/data/torch \
    LABELLOOP_DATABASE__URL=sqlite:////data/labelloop.db \
    LABELLOOP_SERVER__HOST=0.0.0.0

WORKDIR /app

# CPU wheels of torch keep the image near 1 GB instead of several.
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.9.1 torchvision==0.24.1

COPY pyproject.toml README.md settings.toml ./
COPY service ./service
COPY storage ./storage
COPY migrations ./migrations
# labelloop itself, from this directory: its dependencies' bounds are in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[postgres]" \
    && useradd --create-home --uid 1000 labelloop \
    && mkdir -p /data \
    && chown labelloop /data

# Numeric, so a runtime (e.g. Kubernetes runAsNonRoot) can tell it is not root.
USER 1000
VOLUME ["/data"]
EXPOSE 9090

HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=2)"]

# `serve` upgrades the database to the newest migration before it listens.
CMD ["labelloop", "serve"]
