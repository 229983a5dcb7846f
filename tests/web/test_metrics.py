"""GET /metrics: the families, counters that move, and job counts read from the database."""

import json
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from service.app import create_app
from service.labelstudio.errors import (
    ImageDownloadError,
    LabelStudioError,
    LabelStudioHTTPError,
    LabelStudioUnavailable,
    WebhookRefused,
)
from service.settings import (
    DatabaseSettings,
    ServerSettings,
    Settings,
    TrainingSettings,
    WebhookSettings,
)
from service.web import metrics as metrics_module
from service.web.metrics import Metrics, metrics_endpoint
from storage import jobs, labels
from storage.db import create_engine
from tests import payloads

FAMILIES = {
    "labelloop_webhook_events": "counter",
    "labelloop_webhook_seconds": "histogram",
    "labelloop_jobs": "gauge",
    "labelloop_training_seconds": "histogram",
    "labelloop_images_embedded": "counter",
    "labelloop_predictions_pushed": "counter",
    "labelloop_label_studio_errors": "counter",
}


def app_with(metrics: Metrics, metrics_token: str = "") -> Starlette:
    """The endpoint as the app mounts it: it reads ``app.state.services.metrics``."""
    app = Starlette(routes=[Route("/metrics", metrics_endpoint, methods=["GET"])])
    settings = Settings(server=ServerSettings(metrics_token=metrics_token))
    app.state.services = SimpleNamespace(metrics=metrics, settings=settings)
    return app


def test_metrics_token_protects_the_endpoint_when_set(metrics: Metrics) -> None:
    with TestClient(app_with(metrics, metrics_token="scrape-token-01")) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401 and "labelloop_jobs" not in refused.text
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        allowed = client.get("/metrics", headers={"Authorization": "Bearer scrape-token-01"})
        assert allowed.status_code == 200 and "labelloop_jobs" in allowed.text


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def metrics(sqlite_engine: Engine) -> Metrics:
    return Metrics(sqlite_engine)


@pytest.fixture
def client(metrics: Metrics) -> Iterator[TestClient]:
    with TestClient(app_with(metrics)) as client:
        yield client


def scrape(client: TestClient) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """family -> {(sample name, sorted labels): value}."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    families = {}
    for family in text_string_to_metric_families(answer.text):
        families[family.name] = {
            (s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples
        }
    return families


def test_every_family_is_exposed_with_its_type(client: TestClient) -> None:
    answer = client.get("/metrics")
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    types = {f.name: f.type for f in text_string_to_metric_families(answer.text)}
    assert types == FAMILIES  # and nothing else (no *_created twins)


def test_openmetrics_when_asked(client: TestClient) -> None:
    answer = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.endswith("# EOF\n")


def test_counters_move(client: TestClient, metrics: Metrics) -> None:
    before = scrape(client)
    accepted = (
        "labelloop_webhook_events_total",
        (("action", "ANNOTATION_CREATED"), ("outcome", "accepted")),
    )
    assert accepted not in before["labelloop_webhook_events"]
    metrics.webhook("ANNOTATION_CREATED", "accepted", 0.002)
    metrics.webhook("ANNOTATION_CREATED", "accepted", 0.3)
    metrics.training("train", 12.0)
    metrics.embedded(40)
    metrics.embedded(0)
    metrics.pushed(25)
    metrics.label_studio_error(LabelStudioUnavailable("GET /api/tasks: timeout"))
    after = scrape(client)
    assert after["labelloop_webhook_events"][accepted] == 2
    seconds = after["labelloop_webhook_seconds"]
    assert seconds[("labelloop_webhook_seconds_count", ())] == 2
    assert seconds[("labelloop_webhook_seconds_bucket", (("le", "0.0025"),))] == 1
    assert seconds[("labelloop_webhook_seconds_bucket", (("le", "0.5"),))] == 2
    assert seconds[("labelloop_webhook_seconds_sum", ())] == pytest.approx(0.302)
    training = after["labelloop_training_seconds"]
    assert training[("labelloop_training_seconds_count", (("kind", "train"),))] == 1
    assert training[("labelloop_training_seconds_count", (("kind", "finetune"),))] == 0
    assert after["labelloop_images_embedded"][("labelloop_images_embedded_total", ())] == 40
    assert after["labelloop_predictions_pushed"][("labelloop_predictions_pushed_total", ())] == 25
    errors = after["labelloop_label_studio_errors"]
    assert errors[("labelloop_label_studio_errors_total", (("kind", "unavailable"),))] == 1
    assert errors[("labelloop_label_studio_errors_total", (("kind", "http"),))] == 0


def test_unknown_actions_share_one_series(client: TestClient, metrics: Metrics) -> None:
    for action in ("X_1", "X_2", "<evil>", None, ""):
        metrics.webhook(action, "rejected", 0.001)
    series = scrape(client)["labelloop_webhook_events"]
    actions = {dict(labels)["action"] for _, labels in series}
    assert actions == {"other", "none"}
    assert (
        series[("labelloop_webhook_events_total", (("action", "other"), ("outcome", "rejected")))]
        == 3
    )


def test_jobs_are_counted_in_the_database_at_scrape_time(engine: Engine) -> None:
    """On SQLite and Postgres."""
    client = TestClient(app_with(Metrics(engine)))
    assert scrape(client)["labelloop_jobs"][("labelloop_jobs", (("status", "queued"),))] == 0
    with engine.begin() as conn:
        for project_id in (1, 2, 3):
            labels.save_project(conn, project_id, {"title": f"p{project_id}"})
        for project_id, status in ((1, "succeeded"), (1, "failed"), (2, "failed")):
            job_id, _ = jobs.enqueue(conn, project_id, "manual")
            jobs.claim(conn)
            jobs.finish(conn, job_id, status, lease=1)
        jobs.enqueue(conn, 1, "threshold")
        jobs.enqueue(conn, 2, "threshold")
        jobs.claim(conn)
        jobs.enqueue(conn, 3, "schedule")
    counts = {dict(k[1])["status"]: v for k, v in scrape(client)["labelloop_jobs"].items()}
    assert counts == {"queued": 2, "running": 1, "succeeded": 1, "failed": 2, "skipped": 0}


def test_a_scrape_survives_the_database_going_away() -> None:
    broken = sa.create_engine("sqlite:////proc/no-such-dir/labelloop.db")
    try:
        metrics = Metrics(broken)
        metrics.pushed(3)
        with TestClient(app_with(metrics)) as client:
            families = scrape(client)
    finally:
        broken.dispose()
    assert "labelloop_jobs" not in families
    assert families["labelloop_predictions_pushed"][("labelloop_predictions_pushed_total", ())] == 3


def test_each_app_has_its_own_registry(sqlite_engine: Engine) -> None:
    first, second = Metrics(sqlite_engine), Metrics(sqlite_engine)
    first.pushed(5)
    with TestClient(app_with(second)) as client:
        pushed = scrape(client)["labelloop_predictions_pushed"]
    assert pushed[("labelloop_predictions_pushed_total", ())] == 0


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (LabelStudioHTTPError(403, "forbidden", "GET /api/projects/1/"), "http"),
        (LabelStudioUnavailable("timeout after 5 attempts"), "unavailable"),
        (ImageDownloadError("http 404"), "image"),
        (WebhookRefused("SSRF"), "webhook_refused"),
        (LabelStudioError("answer is not JSON"), "other"),
        (httpx.ConnectError("refused"), "other"),
    ],
)
def test_error_kinds(error: BaseException, kind: str) -> None:
    assert metrics_module.error_kind(error) == kind


def test_webhooks_through_the_app_move_the_counters(sqlite_url: str) -> None:
    """The wired app: /metrics is open, and each webhook is counted once with its outcome."""
    settings = Settings(
        server=ServerSettings(api_token="api-token"),
        database=DatabaseSettings(url=sqlite_url),
        webhook=WebhookSettings(secret="hook-secret"),
        training=TrainingSettings(threshold=100, weights="none"),
    )
    transport = httpx.MockTransport(lambda request: httpx.Response(404, json={}))
    app = create_app(settings, run_worker=False, transport=transport)
    event = json.dumps(payloads.annotation_event(10, 100, "red")).encode()
    with TestClient(app) as client:
        for secret in ("hook-secret", "hook-secret", "wrong"):
            client.post("/webhook", content=event, headers={"X-Labelloop-Secret": secret})
        families = scrape(client)  # no token: open, like /health
    events = families["labelloop_webhook_events"]
    name = "labelloop_webhook_events_total"
    created = (("action", "ANNOTATION_CREATED"),)
    assert events[(name, (*created, ("outcome", "accepted")))] == 1
    assert events[(name, (*created, ("outcome", "duplicate")))] == 1
    assert events[(name, (("action", "none"), ("outcome", "rejected")))] == 1
    seconds = families["labelloop_webhook_seconds"]
    assert seconds[("labelloop_webhook_seconds_count", ())] == 3
    assert "labelloop_jobs" in families
