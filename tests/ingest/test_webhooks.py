"""POST /webhook and the control API through the real app, Label Studio faked by a transport."""

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from service.app import create_app
from service.context import Services
from service.ingest.fold_loop import fold_all
from service.settings import (
    DatabaseSettings,
    ServerSettings,
    Settings,
    TrainingSettings,
    WebhookSettings,
)
from tests import payloads

SECRET = "s3cret-webhook"
TOKEN = "api-token-123"


def fake_label_studio(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/api/projects/7/":
        return httpx.Response(200, json=payloads.project(7))
    return httpx.Response(404, json={"detail": "not found"})


@pytest.fixture
def client(sqlite_url: str) -> Iterator[TestClient]:
    settings = Settings(
        server=ServerSettings(api_token=TOKEN),
        database=DatabaseSettings(url=sqlite_url),
        webhook=WebhookSettings(secret=SECRET, max_body_bytes=64 * 1024),
        training=TrainingSettings(threshold=100, weights="none"),
    )
    app = create_app(settings, run_worker=False, transport=httpx.MockTransport(fake_label_studio))
    with TestClient(app, raise_server_exceptions=True) as client:
        yield client


def services(client: TestClient) -> Services:
    result: Services = client.app.state.services  # type: ignore[attr-defined]
    return result


def send(client: TestClient, body: Any, secret: str | None = SECRET) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Labelloop-Secret"] = secret
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/webhook", content=content, headers=headers)


def status(client: TestClient, project_id: int = 1) -> dict[str, Any]:
    fold_all(services(client))
    answer = client.get(f"/projects/{project_id}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def stored_events(client: TestClient) -> int:
    with services(client).engine.begin() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one())


def test_event_is_stored_and_folded(client: TestClient) -> None:
    answer = send(client, payloads.annotation_event(10, 100, "red"))
    assert answer.status_code == 200
    assert answer.json()["ok"] is True
    body = status(client)
    assert body["events"] == 1
    assert body["annotations"] == 1
    assert body["active_model"] is None
    assert body["jobs"] == []


def test_same_body_twice_changes_no_counts(client: TestClient) -> None:
    event = payloads.annotation_event(10, 100, "red")
    assert send(client, event).status_code == 200
    before = status(client)
    assert send(client, event).status_code == 200
    after = status(client)
    assert after["annotations"] == before["annotations"] == 1
    assert after["changes_since_last_job"] == before["changes_since_last_job"] == 1
    assert after["events"] == before["events"] == 1  # an identical redelivery is stored once


@pytest.mark.parametrize(
    ("body", "secret", "code", "message"),
    [
        (payloads.annotation_event(1, 1, "red"), None, 401, "X-Labelloop-Secret"),
        (payloads.annotation_event(1, 1, "red"), "wrong", 401, "X-Labelloop-Secret"),
        (b"{not json", SECRET, 400, "not JSON"),
        (b"\xff\xfe", SECRET, 400, "not JSON"),
        ([1, 2, 3], SECRET, 400, "JSON object"),
        ({"project": 1}, SECRET, 400, "'action'"),
        ({"action": 5}, SECRET, 400, "'action'"),
        (b'{"action": "X", "pad": "' + b"x" * 70_000 + b'"}', SECRET, 413, "larger than"),
        (b"[" * 30_000 + b"]" * 30_000, SECRET, 400, "nested too deeply"),
    ],
    ids=[
        "no-secret",
        "wrong-secret",
        "not-json",
        "not-utf8",
        "array",
        "no-action",
        "action-not-string",
        "too-large",
        "too-deep",
    ],
)
def test_bad_input_is_refused_and_not_stored(
    client: TestClient, body: Any, secret: str | None, code: int, message: str
) -> None:
    answer = send(client, body, secret=secret)
    assert answer.status_code == code
    assert message in answer.json()["error"]
    assert stored_events(client) == 0


def test_unknown_action_is_accepted(client: TestClient) -> None:
    assert send(client, {"action": "LABEL_LINK_CREATED", "project": 1}).status_code == 200
    assert stored_events(client) == 1


def test_wrong_method_is_refused(client: TestClient) -> None:
    assert client.get("/webhook").status_code == 405
    assert client.get("/projects/1/train").status_code == 405


def test_database_fault_gives_503_and_nothing_is_acknowledged(client: TestClient) -> None:
    with services(client).engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE events RENAME TO events_away"))
    answer = send(client, payloads.annotation_event(1, 1, "red"))
    assert answer.status_code == 503
    assert "not stored" in answer.json()["error"]


def test_health_says_why_the_database_is_unavailable(client: TestClient) -> None:
    broken = sa.create_engine("sqlite:////proc/no-such-dir/labelloop.db")
    services(client).engine = broken
    try:
        health = client.get("/health")
        assert health.status_code == 503
        assert "database unavailable" in health.json()["reason"]
    finally:
        broken.dispose()


def test_health_is_open(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_control_api_requires_the_token(client: TestClient) -> None:
    assert client.get("/projects/1").status_code == 401
    assert client.post("/projects/1/train").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.get("/projects", headers=wrong).status_code == 401


def test_manual_train_queues_one_job_and_coalesces(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    send(client, payloads.annotation_event(10, 100, "red"))
    fold_all(services(client))
    first = client.post("/projects/1/train", headers=auth)
    second = client.post("/projects/1/train", headers=auth)
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    assert second.json()["coalesced"] is True
    jobs = status(client)["jobs"]
    assert [(j["reason"], j["status"]) for j in jobs] == [("manual", "queued")]


def test_manual_train_of_a_project_known_only_to_label_studio(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/projects/7/train", headers=auth).status_code == 202
    assert status(client, 7)["jobs"][0]["status"] == "queued"
    assert client.post("/projects/8/train", headers=auth).status_code == 404
