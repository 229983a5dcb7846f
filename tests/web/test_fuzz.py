"""Hostile input at the HTTP edge: /webhook and the control API never answer 5xx.

Hypothesis sends random JSON values, random bytes and random headers (missing or wrong secret,
odd and huge Content-Length) to POST /webhook, and random methods, ids, versions and tokens to
the control API, through the real app (Starlette's TestClient; Label Studio faked by
``httpx.MockTransport``), on SQLite and on Postgres. The properties:

- no answer is a 5xx, except under a deliberate database fault (the webhook then answers 503);
- every 4xx is a JSON object with a non-empty ``error`` string;
- a 200 from /webhook names an event that is stored, byte for byte;
- whatever /webhook accepted folds without raising: one odd body never blocks the events
  behind it in the log.

Bounded (``max_examples`` per property) and deterministic (``derandomize``, no example
database), so CI sees the same examples every run. The ``@example``s pin inputs that broke
labelloop once.
"""

import asyncio
import base64
import json
import string
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from service.app import create_app
from service.context import Services
from service.ingest.eventlog import EventWriter
from service.ingest.fold_loop import fold_all
from service.labelstudio.client import WEBHOOK_ACTIONS
from service.settings import (
    DatabaseSettings,
    LabelStudioSettings,
    ServerSettings,
    Settings,
    TrainingSettings,
    WebhookSettings,
)
from storage import events, models
from storage.migrate import upgrade
from tests import payloads

SECRET = "fuzz-webhook-secret"
TOKEN = "fuzz-api-token"
AUTH = f"Bearer {TOKEN}"
MAX_BODY = 16 * 1024
KNOWN_PROJECT = 1  # has events, a stored model version "v1" and a label config
LS_ONLY_PROJECT = 7  # unknown here, known to the fake Label Studio

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ACTIONS = (*WEBHOOK_ACTIONS, "START_TRAINING")


def fake_label_studio(request: httpx.Request) -> httpx.Response:
    if request.url.path == f"/api/projects/{LS_ONLY_PROJECT}/":
        return httpx.Response(200, json=payloads.project(LS_ONLY_PROJECT))
    return httpx.Response(404, json={"detail": "Not found."})


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    upgrade(database_url)
    app_settings = Settings(
        server=ServerSettings(api_token=TOKEN),
        database=DatabaseSettings(url=database_url),
        label_studio=LabelStudioSettings(url="http://ls.test", api_key="ls-key", catch_up=""),
        webhook=WebhookSettings(secret=SECRET, max_body_bytes=MAX_BODY),
        training=TrainingSettings(threshold=1_000_000, weights="none"),
    )
    transport = httpx.MockTransport(fake_label_studio)
    app = create_app(app_settings, run_worker=False, transport=transport)
    # raise_server_exceptions=False: a crash must show up as the 500 a client would see.
    with TestClient(app, raise_server_exceptions=False) as client:
        _seed(client)
        yield client


def services_of(client: TestClient) -> Services:
    result: Services = client.app.state.services  # type: ignore[attr-defined]
    return result


def _seed(client: TestClient) -> None:
    """Project 1 with one annotation and one stored (inactive) model version, "v1"."""
    answer = _post(client, json.dumps(payloads.annotation_event(1, 1, "red")).encode(), SECRET)
    assert answer.status_code == 200, answer.text
    services = services_of(client)
    fold_all(services)
    with services.engine.begin() as conn:
        models.add(
            conn,
            KNOWN_PROJECT,
            "v1",
            {
                "backbone": "resnet18/none/64",
                "labels": ["red", "blue"],
                "trained_on": 2,
                "head": b"not a real head",
                "settings": {},
            },
        )


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------


def check_answer(answer: httpx.Response) -> None:
    """No 5xx; a 4xx is a JSON object with an error message."""
    assert answer.status_code < 500, f"{answer.status_code}: {answer.text[:300]}"
    if answer.status_code >= 400:
        check_error_body(answer)


def check_error_body(answer: httpx.Response) -> None:
    assert answer.headers.get("content-type", "").startswith("application/json"), (
        f"{answer.status_code} is not JSON: {answer.headers.get('content-type')!r} "
        f"{answer.text[:200]!r}"
    )
    body = answer.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body


def check_webhook(client: TestClient, answer: httpx.Response, sent: bytes) -> None:
    """The answer is sound; a 200 means the very bytes are stored, and they fold."""
    check_answer(answer)
    services = services_of(client)
    if answer.status_code == 200:
        body = answer.json()
        assert body["ok"] is True
        assert isinstance(body["event_id"], int)
        with services.engine.begin() as conn:
            stored = conn.execute(
                sa.text("SELECT body FROM events WHERE id = :id"), {"id": body["event_id"]}
            ).scalar_one()
        assert stored.encode() == sent
    try:
        fold_all(services)  # raises if an accepted body can block the log
    finally:
        # Leave nothing unfolded for the next example, whatever happened.
        with services.engine.begin() as conn:
            conn.execute(sa.text("UPDATE events SET folded = true WHERE NOT folded"))


def _post(
    client: TestClient, content: bytes, secret: str | None, headers: dict[str, str] | None = None
) -> httpx.Response:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if secret is not None:
        sent["X-Labelloop-Secret"] = secret
    return client.post("/webhook", content=content, headers=sent)


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------

secrets = st.one_of(
    st.just(SECRET),
    st.just(SECRET),  # twice: most examples should get past authentication
    st.none(),
    st.sampled_from(["", "wrong", SECRET + "x", SECRET[:-1], SECRET.upper()]),
    st.text(alphabet=string.printable.strip(), max_size=40),
)

# Numbers as JSON may carry them: huge, negative, floats, NaN and infinities (json.loads accepts
# NaN/Infinity, so Label Studio or anyone with the secret can send them).
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30))
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=10), children, max_size=4),
    ),
    max_leaves=20,
)
# Ids as they may arrive: numbers, digit strings (also non-ASCII digits), objects, junk.
ids = st.one_of(
    numbers,
    st.sampled_from(["1", "07", "²", "١٢", "1e3", "", " 1", "-1"]),
    st.text(max_size=8),
    st.fixed_dictionaries({"id": numbers}),
    json_values,
)
texts = st.one_of(st.text(max_size=40), st.sampled_from(["\x00", "a\x00b", "x" * 300]))


@st.composite
def annotations(draw: st.DrawFn) -> Any:
    annotation: dict[str, Any] = {
        "id": draw(ids),
        "task": draw(st.one_of(ids, st.fixed_dictionaries({"id": ids}))),
    }
    optional = {
        "result": st.one_of(
            json_values,
            st.lists(
                st.fixed_dictionaries(
                    {
                        "type": st.sampled_from(["choices", "labels", "x"]),
                        "from_name": st.sampled_from(["label", "other"]),
                        "value": st.one_of(
                            json_values, st.fixed_dictionaries({"choices": json_values})
                        ),
                    }
                ),
                max_size=2,
            ),
        ),
        "was_cancelled": json_values,
        "updated_at": st.one_of(texts, json_values),
        "created_at": texts,
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            annotation[key] = draw(strategy)
    return annotation


@st.composite
def webhook_bodies(draw: st.DrawFn) -> Any:
    """Mostly Label Studio-shaped objects with odd values; sometimes any JSON value."""
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        return draw(json_values)
    body: dict[str, Any] = {
        "action": draw(
            st.one_of(st.sampled_from(ACTIONS), st.sampled_from(ACTIONS), texts, json_values)
        )
    }
    project = draw(
        st.one_of(
            st.builds(
                lambda pid, config, title: {
                    "id": pid,
                    "label_config": config,
                    "title": title,
                },
                ids,
                st.one_of(st.just(payloads.LABEL_CONFIG), texts, json_values),
                st.one_of(texts, json_values),
            ),
            ids,
        )
    )
    if draw(st.integers(min_value=0, max_value=9)):
        body["project"] = project
    shaped = st.one_of(annotations(), st.lists(annotations(), max_size=3), json_values)
    tasks = st.one_of(
        st.fixed_dictionaries({"id": ids, "data": json_values}),
        st.lists(st.fixed_dictionaries({"id": ids}), max_size=3),
        json_values,
    )
    for key, strategy in (
        ("annotation", shaped),
        ("annotations", shaped),
        ("task", tasks),
        ("tasks", tasks),
    ):
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


header_names = st.sampled_from(
    ["Content-Type", "Content-Length", "X-Labelloop-Secret", "Authorization", "X-Other"]
)
header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.sampled_from(["application/json", "text/plain", "multipart/form-data", ""]),
)
content_lengths = st.one_of(
    st.integers(min_value=0, max_value=2**70).map(str),
    st.sampled_from(["-1", "abc", "1e3", " 12", "12, 12", "0x10", "", str(MAX_BODY + 1)]),
)


# ---------------------------------------------------------------------------------------------
# /webhook
# ---------------------------------------------------------------------------------------------


def test_webhook_json_bodies(client: TestClient) -> None:
    @FUZZ
    @given(body=webhook_bodies(), secret=secrets)
    @example(body={"action": "X", "project": "²"}, secret=SECRET)  # isdigit() but not int()
    @example(body={"action": "X", "project": 2**70}, secret=SECRET)
    @example(body={"action": "X", "project": {"id": 2**31}}, secret=SECRET)
    @example(body={"action": "X" * 65, "project": 1}, secret=SECRET)  # longer than the column
    @example(body={"action": "A\x00B", "project": 1}, secret=SECRET)
    @example(
        body={"action": "ANNOTATIONS_DELETED", "project": 1, "annotations": [{"id": 1e309}]},
        secret=SECRET,
    )
    @example(body=payloads.annotation_event(2**40, 5, "red"), secret=SECRET)
    @example(body=payloads.annotation_event(3, 5, "red", updated_at="\x00"), secret=SECRET)
    @example(body=payloads.annotation_event(4, 2**63, "red"), secret=SECRET)
    def webhook_json(body: Any, secret: str | None) -> None:
        if isinstance(body, dict):
            body = {**body, "fuzz_nonce": uuid.uuid4().hex}  # never a duplicate of an earlier one
        sent = json.dumps(body).encode()
        answer = _post(client, sent, secret)
        check_webhook(client, answer, sent)
        if secret != SECRET:
            assert answer.status_code == 401

    webhook_json()


def test_webhook_raw_bytes_and_headers(client: TestClient) -> None:
    @FUZZ
    @given(
        content=st.one_of(
            st.binary(max_size=2048),
            st.text(max_size=200).map(str.encode),
            webhook_bodies().map(lambda b: json.dumps(b).encode()[:-1]),  # cut short
            st.integers(min_value=MAX_BODY - 2, max_value=MAX_BODY + 2).map(
                lambda n: (b'{"action": "X", "pad": "' + b"x" * n)[:n] + b'"}'
            ),
        ),
        secret=secrets,
        headers=st.dictionaries(header_names, header_values, max_size=3),
        content_length=st.one_of(st.none(), content_lengths),
    )
    @example(content=b"\xff\xfe{}", secret=SECRET, headers={}, content_length=None)
    @example(content=b'{"action": "X"}', secret=SECRET, headers={}, content_length=str(2**70))
    @example(content=b'{"action": "X"}', secret=SECRET, headers={}, content_length="-1")
    @example(content=b'{"action": "X"}', secret=SECRET, headers={}, content_length="0")
    def raw(
        content: bytes, secret: str | None, headers: dict[str, str], content_length: Any
    ) -> None:
        headers = {k: v for k, v in headers.items() if k != "X-Labelloop-Secret"}
        if content_length is not None:
            headers["Content-Length"] = content_length
        if content.startswith(b"{") and b"action" in content:
            content = content.replace(b"{", b'{"nonce": "' + uuid.uuid4().hex.encode() + b'", ', 1)
        answer = _post(client, content, secret, headers)
        check_webhook(client, answer, content)
        if answer.status_code == 200:
            assert secret == SECRET and len(content) <= MAX_BODY

    raw()


# ---------------------------------------------------------------------------------------------
# the control API
# ---------------------------------------------------------------------------------------------

path_ids = st.one_of(
    st.integers(min_value=-5, max_value=10).map(str),
    st.integers(min_value=0, max_value=2**80).map(str),
    st.sampled_from([str(KNOWN_PROJECT), str(LS_ONLY_PROJECT), "0", "00", "-1", "²", "1.5"]),
    st.sampled_from(["2147483647", "2147483648", "9223372036854775807", "9223372036854775808"]),
    st.text(min_size=1, max_size=12),
)
versions = st.one_of(
    st.sampled_from(["v1", "labelloop-v1", "V1", "v1 ", "x" * 100, "\x00", "a\x00"]),
    st.text(min_size=1, max_size=30),
)
routes = st.sampled_from(
    [
        ("GET", "/projects"),
        ("GET", "/projects/{id}"),
        ("POST", "/projects/{id}"),
        ("POST", "/projects/{id}/train"),
        ("GET", "/projects/{id}/train"),
        ("GET", "/projects/{id}/models"),
        ("POST", "/projects/{id}/models"),
        ("POST", "/projects/{id}/models/{version}/activate"),
        ("GET", "/projects/{id}/models/{version}/activate"),
        ("DELETE", "/projects/{id}"),
        ("PUT", "/projects/{id}/train"),
        ("GET", "/health"),
        ("GET", "/{id}"),
    ]
)
authorizations = st.one_of(
    st.just(f"Bearer {TOKEN}"),
    st.just(f"Bearer {TOKEN}"),
    st.none(),
    st.sampled_from(["", "Bearer", "Bearer ", f"bearer {TOKEN}", f"Token {TOKEN}", "Bearer x"]),
    st.text(alphabet=string.printable.strip(), max_size=30),
)


# Regressions the fuzzer once found, replayed on every run: (route, project, version).
CONTROL_EXAMPLES = [
    (("GET", "/projects/{id}"), "abc", "v1"),
    (("GET", "/projects/{id}"), str(2**70), "v1"),
    (("GET", "/projects/{id}"), str(2**31), "v1"),
    (("POST", "/projects/{id}/train"), str(2**70), "v1"),
    (("POST", "/projects/{id}/train"), str(2**31), "v1"),
    (("GET", "/projects/{id}/models"), str(2**63), "v1"),
    (("POST", "/projects/{id}/models/{version}/activate"), "1", "\x00"),
    (("POST", "/projects/{id}/models/{version}/activate"), "1", "v1"),
    (("POST", "/projects/{id}/train"), str(LS_ONLY_PROJECT), "v1"),
    (("DELETE", "/projects/{id}"), "1", "v1"),
]


def with_control_examples(test: Any) -> Any:
    for route, project, version in reversed(CONTROL_EXAMPLES):  # decorators apply bottom-up
        test = example(route=route, project=project, version=version, authorization=AUTH)(test)
    return test


def test_control_api(client: TestClient) -> None:
    @FUZZ
    @given(route=routes, project=path_ids, version=versions, authorization=authorizations)
    @with_control_examples
    def control(
        route: tuple[str, str], project: str, version: str, authorization: str | None
    ) -> None:
        method, template = route
        path = template.format(id=quote(project, safe=""), version=quote(version, safe=""))
        headers = {} if authorization is None else {"Authorization": authorization}
        answer = client.request(method, path, headers=headers)
        check_answer(answer)
        authorized = authorization is not None and authorization.lower() == f"bearer {TOKEN}"
        if answer.status_code < 300 and template != "/health":
            assert authorized, f"{method} {path} answered {answer.status_code} without the token"

    control()


# ---------------------------------------------------------------------------------------------
# Label Studio's ML-backend protocol
# ---------------------------------------------------------------------------------------------

ml_projects = st.one_of(
    ids,
    st.builds(lambda n, ts: f"{n}.{ts}", st.integers(min_value=-1, max_value=2**70), st.integers()),
    st.sampled_from(["1.1732870000", "².1", "1.", ".1", "abc.1", "99999999999.1"]),
)
ml_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "project": ml_projects,
            "schema": st.one_of(st.just(payloads.LABEL_CONFIG), texts, json_values),
            "tasks": st.one_of(
                st.lists(st.fixed_dictionaries({"id": ids, "data": json_values}), max_size=3),
                json_values,
            ),
        },
    ),
)
ml_authorizations = st.one_of(
    st.just(AUTH),
    st.just("Basic " + base64.b64encode(f"labelstudio:{TOKEN}".encode()).decode()),
    st.none(),
    st.sampled_from(["Basic", "Basic !!!", "Basic " + base64.b64encode(b"x:wrong").decode()]),
    st.text(alphabet=string.printable.strip(), max_size=30),
)


def test_ml_backend_endpoints(client: TestClient) -> None:
    @FUZZ
    @given(
        path=st.sampled_from(["/setup", "/predict", "/train"]),
        body=ml_bodies,
        authorization=ml_authorizations,
    )
    @example(path="/setup", body={"project": "².1"}, authorization=AUTH)
    @example(path="/train", body={"project": 2**70}, authorization=AUTH)
    @example(path="/train", body={"project": f"{2**31}.1"}, authorization=AUTH)
    @example(path="/predict", body={"project": 1, "tasks": [{"id": 2**63}]}, authorization=AUTH)
    def ml_backend(path: str, body: Any, authorization: str | None) -> None:
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        answer = client.post(path, content=json.dumps(body).encode(), headers=headers)
        check_answer(answer)

    ml_backend()


# ---------------------------------------------------------------------------------------------
# the status page's sign-in
# ---------------------------------------------------------------------------------------------

login_bodies = st.one_of(
    st.binary(max_size=6000),
    st.builds(lambda t: f"token={quote(t)}".encode(), st.text(max_size=60)),
    st.builds(lambda t: f"token={t}&token=x&a=%ZZ".encode(), st.text(max_size=20)),
    st.just(f"token={TOKEN}".encode()),
)


def test_sign_in_routes(client: TestClient) -> None:
    @FUZZ
    @given(
        path=st.sampled_from(["/login", "/logout"]),
        body=login_bodies,
        content_type=st.sampled_from(
            ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain", ""]
        ),
        proto=st.sampled_from(["", "https", "http, https", "\x00"]),
    )
    @example(path="/login", body=b"token=%ff%fe", content_type="", proto="")
    def sign_in(path: str, body: bytes, content_type: str, proto: str) -> None:
        headers = {"Content-Type": content_type, "X-Forwarded-Proto": proto}
        answer = client.post(path, content=body, headers=headers, follow_redirects=False)
        assert answer.status_code < 500, (path, body, answer.status_code)
        if path == "/login" and answer.status_code == 303:
            assert body == f"token={TOKEN}".encode() or f"token={TOKEN}".encode() in body
            assert TOKEN not in answer.headers["set-cookie"]
        elif path == "/login":
            assert answer.status_code == 401 and "set-cookie" not in answer.headers

    sign_in()


# ---------------------------------------------------------------------------------------------
# a deliberate database fault
# ---------------------------------------------------------------------------------------------


def test_database_fault_is_503_and_nothing_is_acknowledged(client: TestClient) -> None:
    services = services_of(client)
    fold_all(services)
    with services.engine.begin() as conn:
        for table in ("events", "projects", "jobs", "model_versions"):
            conn.execute(sa.text(f"ALTER TABLE {table} RENAME TO {table}_away"))

    @settings(FUZZ, max_examples=50)
    @given(body=webhook_bodies(), secret=secrets)
    def webhook(body: Any, secret: str | None) -> None:
        answer = _post(client, json.dumps(body).encode(), secret)
        assert answer.status_code != 200, "acknowledged an event the database cannot hold"
        if answer.status_code >= 500:
            assert answer.status_code == 503, answer.text[:300]
            check_error_body(answer)
            assert "not stored" in answer.json()["error"]
        else:
            check_answer(answer)

    webhook()

    @settings(FUZZ, max_examples=50)
    @given(route=routes, project=path_ids, version=versions, authorization=authorizations)
    def control(
        route: tuple[str, str], project: str, version: str, authorization: str | None
    ) -> None:
        method, template = route
        path = template.format(id=quote(project, safe=""), version=quote(version, safe=""))
        headers = {} if authorization is None else {"Authorization": authorization}
        answer = client.request(method, path, headers=headers)
        if answer.status_code < 500:
            check_answer(answer)

    control()
    assert client.get("/health").status_code == 200  # the database answers; tables are away


# ---------------------------------------------------------------------------------------------
# group commit: one event the database refuses
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_refused_event_does_not_fail_its_batch(engine: Engine) -> None:
    """Concurrent webhooks share a transaction; an event the database refuses (here a project
    id no integer column holds) must fail alone, not take its neighbours down with it."""
    writer = EventWriter(engine, asyncio.Lock(), asyncio.Event())
    runner = asyncio.create_task(writer.run())
    good = [json.dumps({"action": "X", "project": 1, "n": n}) for n in range(20)]
    try:
        async with asyncio.timeout(30):
            answers = await asyncio.gather(
                *(writer.append("X", 1, body) for body in good[:10]),
                writer.append("X", 2**70, '{"action": "X", "project": "huge"}'),
                *(writer.append("X", 1, body) for body in good[10:]),
                return_exceptions=True,
            )
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    refused = answers.pop(10)
    assert isinstance(refused, Exception)
    assert all(isinstance(a, events.Appended) for a in answers), answers
    with engine.begin() as conn:
        stored = conn.execute(sa.text("SELECT body FROM events ORDER BY id")).scalars().all()
    assert stored == good


@pytest.mark.anyio
async def test_identical_bodies_in_one_batch_are_stored_once(engine: Engine) -> None:
    """A redelivery that lands in the same group commit as its original is still one event."""
    writer = EventWriter(engine, asyncio.Lock(), asyncio.Event())
    runner = asyncio.create_task(writer.run())
    body = json.dumps({"action": "X", "project": 1})
    other = json.dumps({"action": "X", "project": 2})
    try:
        async with asyncio.timeout(30):
            answers = await asyncio.gather(
                writer.append("X", 1, body),
                writer.append("X", 2, other),
                writer.append("X", 1, body),
                writer.append("X", 1, body),
            )
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    first, second, again, third = answers
    assert (first.duplicate, second.duplicate, again.duplicate, third.duplicate) == (
        False,
        False,
        True,
        True,
    )
    assert first.id == again.id == third.id != second.id
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 2
