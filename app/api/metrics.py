"""GET /metrics for Prometheus (prometheus-client's text format). What the box holds (jobs,
GPUs, GPU-seconds per user, queue waits, epoch times, each host's scheduling pass) is read
from the database at each scrape; HTTP request durations are those of this API process, or of
all the processes of one `trainyard api --workers N`.
Scraping needs a bearer token like every route but /healthz (README: a scrape config)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import UNAUTHORIZED, current_user
from app.core import job_tally, metrics
from app.core.db import get_session_factory
from app.core.models import JobStatus, utcnow

# Set by `trainyard api --workers N` for its workers (prometheus-client's multiprocess
# mode): each process writes its samples to files there, and a scrape of any of them sums
# every process's. Read once, at import, as prometheus-client itself does.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS = MULTIPROCESS_DIR in os.environ

REGISTRY = CollectorRegistry()
REQUEST_SECONDS = Histogram(
    "trainyard_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status (this API "
    "process, or every worker of one `trainyard api --workers N`).",
    ["method", "route", "status"],
    registry=REGISTRY,
)


def _histogram(name: str, documentation: str, counts: metrics.HistogramCounts) -> Metric:
    family = HistogramMetricFamily(name, documentation)
    family.add_metric(
        [],
        [(floatToGoString(bound), count) for bound, count in counts.buckets]
        + [("+Inf", counts.count)],
        counts.total,
    )
    return family


class BoxCollector(Collector):
    """Reads the figures of the whole box from the database, once per scrape."""

    def collect(self) -> Iterator[Metric]:
        with get_session_factory()() as session:
            jobs = GaugeMetricFamily("trainyard_jobs", "Jobs by status.", labels=["status"])
            counts = job_tally.by_status(session)  # not a scan of every job per scrape
            for status in JobStatus:
                jobs.add_metric([status.value], counts.get(status.value, 0))
            yield jobs
            yield _histogram(
                "trainyard_queue_wait_seconds",
                "From submission to the start of the job's latest run, over jobs that started.",
                metrics.queue_wait(session),
            )
            yield _histogram(
                "trainyard_epoch_seconds",
                "Wall time of each recorded epoch.",
                metrics.epoch_seconds(session),
            )
            gpus = GaugeMetricFamily(
                "trainyard_gpus", "GPUs by host and state.", labels=["host", "state"]
            )
            for (host, state), count in sorted(metrics.gpus_by_state(session).items()):
                gpus.add_metric([host, state], count)
            yield gpus
            held = CounterMetricFamily(
                "trainyard_gpu_seconds",
                "GPU-seconds held by each user's jobs (GPU leases; a held lease counts to now).",
                labels=["user"],
            )
            for user, seconds in sorted(metrics.gpu_seconds_by_user(session, utcnow()).items()):
                held.add_metric([user], seconds)
            yield held
            passes = GaugeMetricFamily(
                "trainyard_scheduling_pass_seconds",
                "Duration of each host's last scheduling pass.",
                labels=["host"],
            )
            for host, seconds in sorted(metrics.scheduling_pass_seconds(session).items()):
                passes.add_metric([host], seconds)
            yield passes


BOX = BoxCollector()
REGISTRY.register(BOX)


@contextmanager
def shared_between_processes() -> Iterator[None]:
    """For the processes started inside: HTTP timings kept in a private temporary folder
    that all of them read, removed at the end (or in the operator's own
    PROMETHEUS_MULTIPROC_DIR, left as it is)."""
    if MULTIPROCESS_DIR in os.environ:
        yield
        return
    folder = tempfile.mkdtemp(prefix="trainyard-metrics-")
    os.environ[MULTIPROCESS_DIR] = folder
    try:
        yield
    finally:
        del os.environ[MULTIPROCESS_DIR]
        shutil.rmtree(folder, ignore_errors=True)


def _registry() -> CollectorRegistry:
    if not MULTIPROCESS:
        return REGISTRY
    every_process = CollectorRegistry()
    MultiProcessCollector(every_process)
    every_process.register(BOX)
    return every_process


router = APIRouter(tags=["metrics"], dependencies=[Depends(current_user)], responses=UNAUTHORIZED)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
def get_metrics() -> Response:
    """Prometheus metrics of the box and of the API's processes."""
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)


class RequestTimer:
    """ASGI middleware: observes each request's duration under its route template (so
    /jobs/1 and /jobs/2 are one series), or `unmatched`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = "500"

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUEST_SECONDS.labels(scope["method"], route, status).observe(
                time.perf_counter() - started
            )
