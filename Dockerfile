# Two images from one file:
#   docker build --target api -t trainyard-api .      # FastAPI, no TensorFlow, no CUDA
#   docker build --target worker -t trainyard-worker . # Celery worker + GPU TensorFlow
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TRAINYARD_DATA_DIR=/var/lib/trainyard
WORKDIR /srv/trainyard
# The services run as this account, not root; the data volume is its own (0700).
RUN useradd --create-home --uid 1000 trainyard \
    && mkdir -p /var/lib/trainyard && chown trainyard /var/lib/trainyard
# The package is installed in editable mode so that `migrations/` (beside app/) is found.
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations

FROM base AS api
RUN pip install -e .
USER trainyard
EXPOSE 8000
CMD ["trainyard", "api", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
# tensorflow[and-cuda] brings its CUDA and cuDNN wheels; the host needs only the driver.
RUN pip install -e ".[gpu]"
USER trainyard
CMD ["trainyard", "worker"]
