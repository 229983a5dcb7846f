"""Prometheus metrics of one labelloop process, and ``GET /metrics`` (open, like /health).

A ``Metrics`` object owns its own ``CollectorRegistry`` (no module globals: two apps in one
process, as in the tests, never share counters). Counters are moved by the code that does the
work, through the small methods below; ``labelloop_jobs{status}`` is read from the database at
scrape time, so every replica reports the same, shared queue.

In a split deployment (``serve --no-worker`` + ``worker``) the worker's counters (training
seconds, images embedded, predictions pushed) live in the worker process, which serves no HTTP.
"""

import logging
from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from service.labelstudio.client import WEBHOOK_ACTIONS
from service.labelstudio.errors import (
    ImageDownloadError,
    LabelStudioHTTPError,
    LabelStudioUnavailable,
    WebhookRefused,
)
from service.web.auth import bearer_allowed
from storage import jobs as job_rows
from storage.db import reading
from storage.tables import jobs

logger = logging.getLogger(__name__)

# A webhook answer is one durable insert: about a millisecond on a quiet disk, and Label Studio
# gives up after one second.
WEBHOOK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Head training takes seconds, fine-tuning minutes to an hour.
TRAINING_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
JOB_STATUSES = ("queued", "running", *job_rows.FINISHED)
OUTCOMES = ("accepted", "duplicate", "rejected")
TRAINING_KINDS = job_rows.TRAININGS
ERROR_KINDS = ("http", "unavailable", "image", "webhook_refused", "other")
# Label values come from webhook bodies, which anyone may post: only these are kept verbatim,
# so a hostile sender cannot grow the number of series without bound.
KNOWN_ACTIONS = frozenset(
    {*WEBHOOK_ACTIONS, "PROJECT_CREATED", "PROJECT_DELETED", "START_TRAINING"}
)


class Metrics:
    """Every metric of the process, registered in ``self.registry``."""

    def __init__(self, engine: Engine) -> None:
        # No `*_created` twin of every counter: half the series, none of them queried. (A
        # library-wide switch; labelloop has no other registry.)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.webhook_events = Counter(
            "labelloop_webhook_events",
            "Webhook requests by action and outcome (accepted, duplicate, rejected).",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            "labelloop_webhook_seconds",
            "Time to answer a webhook, durable commit included.",
            buckets=WEBHOOK_BUCKETS,
            registry=self.registry,
        )
        self.training_seconds = Histogram(
            "labelloop_training_seconds",
            "Wall time of training jobs that produced a version, by kind (train, finetune).",
            ["kind"],
            buckets=TRAINING_BUCKETS,
            registry=self.registry,
        )
        self.images_embedded = Counter(
            "labelloop_images_embedded",
            "Images run through the backbone (embedding cache misses).",
            registry=self.registry,
        )
        self.predictions_pushed = Counter(
            "labelloop_predictions_pushed",
            "Predictions imported into Label Studio.",
            registry=self.registry,
        )
        self.label_studio_errors = Counter(
            "labelloop_label_studio_errors",
            "Failed Label Studio calls by kind: http, unavailable, image, webhook_refused, other.",
            ["kind"],
            registry=self.registry,
        )
        # Series present (at 0) from the first scrape, so rate() and alerts see the first event.
        for outcome in OUTCOMES:
            self.webhook_events.labels(action="other", outcome=outcome)
        for kind in TRAINING_KINDS:
            self.training_seconds.labels(kind=kind)
        for kind in ERROR_KINDS:
            self.label_studio_errors.labels(kind=kind)
        self.registry.register(JobsCollector(engine))
        self._webhook_counters: dict[tuple[str, str], Counter] = {}

    def webhook(self, action: str | None, outcome: str, seconds: float) -> None:
        """One webhook answered: one counter increment, one histogram observation."""
        key = (action_label(action), outcome)
        if (counter := self._webhook_counters.get(key)) is None:
            # labels() costs ~10 us (validation, a lock): once per series, not per webhook.
            counter = self._webhook_counters[key] = self.webhook_events.labels(*key)
        counter.inc()
        self.webhook_seconds.observe(seconds)

    def training(self, kind: str, seconds: float) -> None:
        self.training_seconds.labels(kind=kind).observe(seconds)

    def embedded(self, count: int) -> None:
        if count > 0:
            self.images_embedded.inc(count)

    def pushed(self, count: int) -> None:
        if count > 0:
            self.predictions_pushed.inc(count)

    def label_studio_error(self, error: BaseException) -> None:
        self.label_studio_errors.labels(kind=error_kind(error)).inc()

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) for an ``Accept`` header: Prometheus text unless OpenMetrics
        is asked for. Queries the database: call it off the event loop."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class JobsCollector(Collector):
    """``labelloop_jobs{status}``: jobs per status, counted in the database at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            counts = job_counts(self.engine)
        except sa.exc.DBAPIError as exc:
            # /health reports the database; a scrape still returns the process's counters.
            logger.warning("labelloop_jobs not collected: %s", type(exc.orig).__name__)
            return
        for status in sorted({*JOB_STATUSES, *counts}):
            family.add_metric([status], counts.get(status, 0))
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "labelloop_jobs", "Jobs in the database by status (all projects).", labels=["status"]
        )


def job_counts(engine: Engine) -> dict[str, int]:
    stmt = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
    with reading(engine) as conn:
        return {str(status): int(count) for status, count in conn.execute(stmt)}


def action_label(action: str | None) -> str:
    if not action:
        return "none"
    return action if action in KNOWN_ACTIONS else "other"


def error_kind(error: BaseException) -> str:
    if isinstance(error, ImageDownloadError):
        return "image"
    if isinstance(error, WebhookRefused):
        return "webhook_refused"
    if isinstance(error, LabelStudioUnavailable):
        return "unavailable"
    if isinstance(error, LabelStudioHTTPError):
        return "http"
    return "other"


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: Prometheus text format. Open by default, like /health (it holds counts, no
    data); with ``server.metrics_token`` set, only for that Bearer token."""
    services = request.app.state.services
    token = services.settings.server.metrics_token
    if token and not bearer_allowed(request, token):
        return Response(
            "metrics need the Bearer token server.metrics_token\n",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    metrics: Metrics = services.metrics
    accept = request.headers.get("accept", "")
    body, content_type = await run_in_threadpool(metrics.exposition, accept)
    return Response(body, headers={"Content-Type": content_type})
