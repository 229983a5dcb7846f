"""service.labelstudio against a tiny in-test Label Studio (httpx.MockTransport)."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from service.labelstudio import transport
from service.labelstudio.client import WEBHOOK_ACTIONS, LabelStudio
from service.labelstudio.errors import (
    ImageDownloadError,
    LabelStudioError,
    LabelStudioHTTPError,
    LabelStudioUnavailable,
    WebhookRefused,
)
from service.labelstudio.predictions import WRITE_TIMEOUT
from tests.fake_dns import FakeDNS

pytestmark = pytest.mark.anyio

BASE = "http://ls.test:8080"
LEGACY_KEY = "0123456789abcdef0123456789abcdef01234567"
HOOK_SECRET = "hook-secret-9f8e7d"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


PAT = make_jwt({"token_type": "refresh", "exp": 9_999_999_999, "jti": "pat"})


class Sleeps:
    """An injected sleep that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def client(handler: Handler, key: str = LEGACY_KEY, **kwargs: Any) -> LabelStudio:
    kwargs.setdefault("sleep", Sleeps())
    kwargs.setdefault("resolve", FakeDNS())
    return LabelStudio(BASE + "/", key, transport=httpx.MockTransport(handler), **kwargs)


def answer(data: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=data)


# -- authentication ------------------------------------------------------------------------


async def test_legacy_key_sends_token_header_to_normalised_url() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer({"id": 3})

    async with client(handler) as ls:
        assert await ls.get_project(3) == {"id": 3}
    assert str(seen[0].url) == f"{BASE}/api/projects/3/"
    assert seen[0].headers["Authorization"] == f"Token {LEGACY_KEY}"


class PatServer:
    """Issues access tokens for PAT; ``lifetimes`` gives each new token's seconds to live."""

    def __init__(self, lifetimes: list[int], reject: int = 0) -> None:
        self.lifetimes = lifetimes
        self.reject = reject  # answer 401 to this many API calls made with a valid token
        self.issued: list[str] = []
        self.api_auth: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/token/refresh/":
            assert "Authorization" not in request.headers
            if json.loads(request.content) != {"refresh": PAT}:
                return answer({"detail": "Token is invalid"}, 401)
            lifetime = self.lifetimes[min(len(self.issued), len(self.lifetimes) - 1)]
            access = make_jwt({"exp": int(time.time()) + lifetime, "n": len(self.issued)})
            self.issued.append(access)
            return answer({"access": access})
        auth = request.headers.get("Authorization", "")
        self.api_auth.append(auth)
        if auth != f"Bearer {self.issued[-1]}" or self.reject:
            self.reject = max(self.reject - 1, 0)
            return answer({"detail": "Given token not valid"}, 401)
        return answer({"id": 1})


async def test_pat_is_exchanged_and_refreshed_before_expiry() -> None:
    server = PatServer(lifetimes=[10, 300])  # the first one is within the 30 s margin
    async with client(server, PAT) as ls:
        for _ in range(3):
            await ls.get_project(1)
    assert len(server.issued) == 2
    assert server.api_auth == [f"Bearer {server.issued[0]}"] + [f"Bearer {server.issued[1]}"] * 2
    assert f"Bearer {PAT}" not in server.api_auth


async def test_pat_refreshes_once_on_401_and_retries() -> None:
    server = PatServer(lifetimes=[300], reject=1)
    async with client(server, PAT) as ls:
        assert await ls.get_project(1) == {"id": 1}
    assert len(server.issued) == 2
    assert server.api_auth == [f"Bearer {server.issued[0]}", f"Bearer {server.issued[1]}"]


async def test_pat_second_401_is_an_error() -> None:
    server = PatServer(lifetimes=[300], reject=5)
    async with client(server, PAT) as ls:
        with pytest.raises(LabelStudioHTTPError) as caught:
            await ls.get_project(1)
    assert caught.value.status_code == 401
    assert len(server.issued) == 2 and len(server.api_auth) == 2


async def test_refused_pat_does_not_leak() -> None:
    other = make_jwt({"exp": 9_999_999_999, "jti": "other"})
    async with client(PatServer(lifetimes=[300]), other) as ls:
        with pytest.raises(LabelStudioHTTPError) as caught:
            await ls.get_project(1)
        assert other not in repr(ls)
    assert caught.value.status_code == 401 and other not in str(caught.value)


# -- paging --------------------------------------------------------------------------------


def task_server(ids: list[int], afters: list[int], *, honour_filter: bool = True) -> Handler:
    """Label Studio 1.23.2's /api/tasks/ with a Data Manager query: the first ``page_size``
    tasks whose id is above the filter's value, in id order; ``afters`` records the values."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/tasks/"
        params = request.url.params
        assert (params["project"], params["page"]) == ("5", "1")
        [item] = json.loads(params["query"])["filters"]["items"]
        assert (item["filter"], item["operator"]) == ("filter:tasks:id", "greater")
        after = int(item["value"]) if honour_filter else 0
        afters.append(after)
        above = [i for i in sorted(ids) if i > after]
        chunk = [{"id": i} for i in above[: int(params["page_size"])]]
        return answer({"total": len(above), "tasks": chunk})

    return handler


async def collect(ls: LabelStudio, page_size: int) -> list[int]:
    tasks: AsyncIterator[dict[str, Any]] = ls.iter_tasks(5, page_size=page_size)
    return [task["id"] async for task in tasks]


async def test_iter_tasks_pages_by_id() -> None:
    afters: list[int] = []
    ids = [3, *range(10, 259)]  # 250 tasks, ids with a gap
    async with client(task_server(ids, afters)) as ls:
        assert await collect(ls, 100) == ids
    assert afters == [0, 108, 208]  # the last page is short: no request past the end


async def test_iter_tasks_skips_no_task_when_one_is_deleted_mid_listing() -> None:
    ids = list(range(1, 251))
    afters: list[int] = []
    serve = task_server(ids, afters)

    def handler(request: httpx.Request) -> httpx.Response:
        if len(afters) == 1:
            ids.remove(5)  # page 1 was read; with page numbers, task 101 would now be skipped
        return serve(request)

    async with client(handler) as ls:
        seen = await collect(ls, 100)
    assert 101 in seen and seen == sorted(seen) and len(seen) == 250


async def test_iter_tasks_refuses_a_label_studio_that_ignores_the_filter() -> None:
    afters: list[int] = []
    async with client(task_server(list(range(1, 251)), afters, honour_filter=False)) as ls:
        with pytest.raises(LabelStudioError, match="does not filter tasks by id"):
            await collect(ls, 100)
    assert len(afters) == 2  # no endless loop over page 1


async def test_iter_tasks_404_on_first_page_is_an_error() -> None:
    async with client(lambda request: answer({"detail": "Not found."}, 404)) as ls:
        with pytest.raises(LabelStudioHTTPError) as caught:
            await collect(ls, 100)
    assert caught.value.status_code == 404


# -- retries -------------------------------------------------------------------------------


async def test_retries_503_then_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        return answer({"detail": "busy"}, 503) if len(attempts) < 3 else answer({"id": 2})

    sleeps = Sleeps()
    async with client(handler, sleep=sleeps, backoff=1.0) as ls:
        assert await ls.get_project(2) == {"id": 2}
    assert len(attempts) == 3
    assert len(sleeps.delays) == 2
    assert 0.5 <= sleeps.delays[0] <= 1.5 and 1.0 <= sleeps.delays[1] <= 3.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "GET /api/projects/2/" in warnings[0].getMessage()
    assert "http 503" in warnings[0].getMessage()


async def test_backoff_grows_and_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "_jitter", lambda: 1.0)
    sleeps = Sleeps()
    async with client(lambda r: answer({}, 502), sleep=sleeps, retries=5, backoff=4.0) as ls:
        with pytest.raises(LabelStudioUnavailable):
            await ls.get_project(1)
    assert sleeps.delays == [4.0, 8.0, 10.0, 10.0, 10.0]


async def test_backoff_jitter_stays_within_bounds() -> None:
    sleeps = Sleeps()
    async with client(lambda r: answer({}, 500), sleep=sleeps, retries=6, backoff=1.0) as ls:
        with pytest.raises(LabelStudioUnavailable):
            await ls.get_project(1)
    expected = [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert len(sleeps.delays) == 6
    for delay, base in zip(sleeps.delays, expected, strict=True):
        assert 0.5 * base <= delay <= 1.5 * base


async def test_no_retry_on_400() -> None:
    attempts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        return answer({"detail": "model_version has no predictions"}, 400)

    sleeps = Sleeps()
    async with client(handler, sleep=sleeps) as ls:
        with pytest.raises(LabelStudioHTTPError) as caught:
            await ls.set_model_version(1, "v9")
    assert attempts == [1] and sleeps.delays == []
    assert caught.value.status_code == 400
    assert caught.value.detail == "model_version has no predictions"


async def test_connect_errors_exhaust_to_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        raise httpx.ConnectError("connection refused", request=request)

    async with client(handler, retries=2) as ls:
        with pytest.raises(LabelStudioUnavailable) as caught:
            await ls.list_predictions(4)
    assert len(attempts) == 3
    assert "ConnectError" in str(caught.value)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("ConnectError" in w for w in warnings)


# -- webhooks ------------------------------------------------------------------------------


class HookServer:
    def __init__(self, hooks: list[dict[str, Any]] | None = None, refuse: str = "") -> None:
        self.hooks = {hook["id"]: hook for hook in hooks or []}
        self.refuse = refuse
        self.calls: list[tuple[str, str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body: Any = json.loads(request.content) if request.content else None
        self.calls.append((request.method, request.url.path, body))
        if request.method == "GET":
            project = int(request.url.params["project"])
            return answer([h for h in self.hooks.values() if h["project"] == project])
        if self.refuse:
            return answer({"detail": self.refuse}, 403)
        if request.method == "POST":
            hook = {**body, "id": max(self.hooks, default=0) + 1}
            self.hooks[hook["id"]] = hook
            return answer(hook, 201)
        hook_id = int(request.url.path.split("/")[-2])
        if request.method == "DELETE":
            del self.hooks[hook_id]
            return httpx.Response(204)
        assert "project" not in body  # read-only on update
        self.hooks[hook_id] = {**self.hooks[hook_id], **body}
        return answer(self.hooks[hook_id])


HOOK_URL = "http://labelloop.test:8000/webhook"
HOOK_HEADERS = {"X-Labelloop-Secret": HOOK_SECRET}


async def test_ensure_webhook_creates_once_then_patches() -> None:
    server = HookServer()
    async with client(server) as ls:
        hook, created = await ls.ensure_webhook(7, HOOK_URL, HOOK_HEADERS)
        assert created and hook["project"] == 7
        assert hook["actions"] == list(WEBHOOK_ACTIONS)
        hook2, created2 = await ls.ensure_webhook(7, HOOK_URL, HOOK_HEADERS, actions=["X"])
    assert not created2 and hook2["id"] == hook["id"]
    assert len(server.hooks) == 1
    method, path, body = server.calls[-1]
    assert (method, path) == ("PATCH", f"/api/webhooks/{hook['id']}/")
    assert body == {
        "url": HOOK_URL,
        "headers": HOOK_HEADERS,
        "send_payload": True,
        "send_for_all_actions": False,
        "actions": ["X"],
        "is_active": True,
    }


async def test_ensure_webhook_deletes_duplicates() -> None:
    def hook(hook_id: int, project: int, url: str) -> dict[str, Any]:
        return {"id": hook_id, "project": project, "url": url, "actions": []}

    server = HookServer(
        [hook(4, 7, HOOK_URL), hook(2, 7, HOOK_URL), hook(3, 7, "http://x/"), hook(5, 8, HOOK_URL)]
    )
    async with client(server) as ls:
        kept, created = await ls.ensure_webhook(7, HOOK_URL, HOOK_HEADERS)
    assert not created and kept["id"] == 2
    assert sorted(server.hooks) == [2, 3, 5]
    assert ("DELETE", "/api/webhooks/4/", None) in server.calls


async def test_ensure_webhook_ssrf_refusal() -> None:
    server = HookServer(refuse="URL resolves to a reserved network address (block: 127.0.0.0/8)")
    async with client(server) as ls:
        with pytest.raises(WebhookRefused) as caught:
            await ls.ensure_webhook(7, HOOK_URL + "?token=abc", HOOK_HEADERS)
    message = str(caught.value)
    assert "SSRF_PROTECTION_ENABLED=false" in message and "[webhook] url" in message
    assert HOOK_SECRET not in message and "token=abc" not in message


async def test_ensure_webhook_other_403_is_http_error() -> None:
    server = HookServer(refuse="You do not have permission to perform this action.")
    async with client(server) as ls:
        with pytest.raises(LabelStudioHTTPError) as caught:
            await ls.ensure_webhook(7, HOOK_URL, HOOK_HEADERS)
    assert not isinstance(caught.value, WebhookRefused)
    assert caught.value.status_code == 403


# -- predictions ---------------------------------------------------------------------------


async def test_predictions_calls() -> None:
    calls: list[tuple[str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body: Any = json.loads(request.content) if request.content else None
        calls.append((request.method, str(request.url), body))
        if request.method == "POST":
            return answer({"created": len(body)}, 201)
        if request.method == "GET":
            return answer([{"id": 1, "task": 2}])
        return answer({"id": 3, "model_version": "v2"})

    prediction = {"task": 2, "result": [], "score": 0.3, "model_version": "v2"}
    async with client(handler) as ls:
        assert await ls.import_predictions(3, [prediction, prediction]) == 2
        assert await ls.list_predictions(3) == [{"id": 1, "task": 2}]
        await ls.set_model_version(3, "v2")
    assert calls == [
        ("POST", f"{BASE}/api/projects/3/import/predictions", [prediction, prediction]),
        ("GET", f"{BASE}/api/predictions/?project=3", None),
        ("PATCH", f"{BASE}/api/projects/3/", {"model_version": "v2"}),
    ]


async def test_task_scoped_predictions_and_deletes() -> None:
    calls: list[tuple[str, str, Any, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body: Any = json.loads(request.content) if request.content else None
        read = request.extensions["timeout"]["read"]
        calls.append((request.method, request.url.path, body, read))
        if request.url.path == "/api/tasks/":
            query = json.loads(request.url.params["query"])
            assert request.url.params["fields"] == "all"
            ids = query["selectedItems"]["included"]
            assert query["selectedItems"]["all"] is False
            tasks = [{"id": t, "predictions": [{"id": 10 + t, "task": t}]} for t in ids]
            return answer({"total": len(ids), "tasks": tasks})
        if request.url.path == "/api/dm/actions":
            assert request.url.params["id"] == "delete_tasks_predictions"
            return answer({"processed_items": 2, "detail": "Deleted 2 predictions"})
        if request.url.path == "/api/predictions/11/":
            return httpx.Response(404, json={"detail": "Not found."})
        if request.method == "DELETE" and "model-versions" in request.url.path:
            return answer({"deleted_predictions": 7})
        return httpx.Response(204)

    async with client(handler) as ls:
        found = await ls.task_predictions(3, [1, 2, 3], page_size=2)
        assert found == {t: [{"id": 10 + t, "task": t}] for t in (1, 2, 3)}
        assert await ls.delete_tasks_predictions(3, [1, 2]) == 2
        assert await ls.delete_prediction(12) is True
        assert await ls.delete_prediction(11) is False  # already gone
        assert await ls.delete_model_version(3, "labelloop-v1") == 7
    paths = ["/api/tasks/", "/api/tasks/", "/api/dm/actions", "/api/predictions/12/",
             "/api/predictions/11/", "/api/projects/3/model-versions/"]  # fmt: skip
    assert [c[1] for c in calls] == paths
    assert calls[2][2] == {"selectedItems": {"all": False, "included": [1, 2]}}
    assert calls[5][2] == {"model_version": "labelloop-v1"}
    # Bulk writes wait longer than reads: their answer is never resent blindly.
    assert calls[2][3] == WRITE_TIMEOUT and calls[0][3] < WRITE_TIMEOUT


# -- images --------------------------------------------------------------------------------


def image_server(seen: list[httpx.Request], body: bytes = b"PNG") -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body)

    return handler


@pytest.mark.parametrize(
    ("uri", "url", "auth"),
    [
        ("/data/upload/3/x.png", f"{BASE}/data/upload/3/x.png", True),
        ("/data/local-files/?d=dir/x.png", f"{BASE}/data/local-files/?d=dir/x.png", True),
        (f"{BASE}/data/upload/3/y.png", f"{BASE}/data/upload/3/y.png", True),
        ("http://ls.test:9999/y.png", "http://ls.test:9999/y.png", False),
        ("https://ls.test:8080/y.png", "https://ls.test:8080/y.png", False),
        (
            "https://cdn.test/a.png?X-Amz-Signature=a%2Fb+c",
            "https://cdn.test/a.png?X-Amz-Signature=a%2Fb+c",
            False,
        ),
    ],
)
async def test_download_sends_key_only_to_label_studio(uri: str, url: str, auth: bool) -> None:
    seen: list[httpx.Request] = []
    async with client(image_server(seen)) as ls:
        assert await ls.download_image(uri) == b"PNG"
    assert str(seen[0].url) == url
    assert ("Authorization" in seen[0].headers) is auth


async def test_download_cloud_uri_resolves_and_redirect_drops_key() -> None:
    uri = "s3://bucket/~~~/cat ü>?.png"  # standard base64 would hold "+" and "/"
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "ls.test":
            return httpx.Response(302, headers={"Location": "https://bucket.s3.test/c.png?sig=1"})
        return httpx.Response(200, content=b"JPEG")

    async with client(handler) as ls:
        assert await ls.download_image(uri, task_id=42) == b"JPEG"
    resolve, bucket = seen
    assert resolve.url.path == "/tasks/42/resolve/"
    fileuri = resolve.url.params["fileuri"]
    assert base64.urlsafe_b64decode(fileuri).decode() == uri
    assert "+" not in fileuri and "/" not in fileuri
    assert resolve.headers["Authorization"] == f"Token {LEGACY_KEY}"
    assert bucket.url.host == "bucket.s3.test" and "Authorization" not in bucket.headers


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("gs://bucket/x.png", "unsupported uri scheme gs without task id"),
        ("ftp://host/x.png", "unsupported uri scheme ftp"),
    ],
)
async def test_download_unsupported_uri(uri: str, reason: str) -> None:
    seen: list[httpx.Request] = []
    async with client(image_server(seen)) as ls:
        with pytest.raises(ImageDownloadError) as caught:
            await ls.download_image(uri)
    assert caught.value.reason == reason and seen == []


class LongStream(httpx.AsyncByteStream):
    """1 MiB in 1 KiB chunks, without Content-Length; counts what the client pulled."""

    def __init__(self) -> None:
        self.chunks = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.chunks < 1024:
            self.chunks += 1
            yield b"x" * 1024

    async def aclose(self) -> None:
        self.closed = True


async def test_download_exactly_max_bytes_is_fine() -> None:
    async with client(image_server([], body=b"x" * 1000)) as ls:
        assert await ls.download_image("/data/upload/1/a.png", max_bytes=1000) == b"x" * 1000


async def test_download_too_large_by_content_length_reads_nothing() -> None:
    stream = LongStream()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": str(2**40)}, stream=stream)

    async with client(handler) as ls:
        with pytest.raises(ImageDownloadError) as caught:
            await ls.download_image("/data/upload/1/a.png", max_bytes=1000)
    assert caught.value.reason == "too large (> 1000 bytes)"
    assert stream.chunks == 0 and stream.closed


async def test_download_too_large_while_streaming() -> None:
    stream = LongStream()

    def handler(request: httpx.Request) -> httpx.Response:
        response = httpx.Response(200, stream=stream)
        assert "Content-Length" not in response.headers
        return response

    async with client(handler) as ls:
        with pytest.raises(ImageDownloadError) as caught:
            await ls.download_image("/data/upload/1/a.png", max_bytes=10_000)
    assert caught.value.reason == "too large (> 10000 bytes)"
    assert stream.chunks == 10 and stream.closed


async def test_download_http_errors() -> None:
    attempts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        return httpx.Response(404 if "missing" in request.url.path else 503)

    async with client(handler, retries=1) as ls:
        with pytest.raises(ImageDownloadError) as missing:
            await ls.download_image("/data/upload/1/missing.png")
        with pytest.raises(ImageDownloadError) as busy:
            await ls.download_image("https://cdn.test/busy.png?secret=s3cr3t")
    assert missing.value.reason == "http 404"
    assert busy.value.reason.startswith("unavailable: http 503")
    assert "s3cr3t" not in str(busy.value)
    assert attempts == ["/data/upload/1/missing.png", "/busy.png", "/busy.png"]


# -- secrets -------------------------------------------------------------------------------


async def test_secrets_stay_out_of_errors_logs_and_repr(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/webhooks/" and request.method == "GET":
            return answer([])
        echo = f"{request.headers.get('Authorization')} {request.content.decode()}"
        status = 503 if request.method == "GET" else 400
        return answer({"detail": f"bad request: {echo}"}, status)

    async with client(handler) as ls:
        assert LEGACY_KEY not in repr(ls)
        with pytest.raises(LabelStudioHTTPError) as http_error:
            await ls.set_model_version(1, "v1")
        with pytest.raises(LabelStudioUnavailable) as unavailable:
            await ls.get_project(1)
        with pytest.raises(LabelStudioHTTPError) as hook_error:
            await ls.ensure_webhook(1, HOOK_URL, HOOK_HEADERS)
    assert "bad request: Token ***" in http_error.value.detail
    errors = [http_error.value, unavailable.value, hook_error.value]
    for text in [*map(str, errors), *map(repr, errors), caplog.text]:
        assert LEGACY_KEY not in text and HOOK_SECRET not in text
    assert any(r.levelno == logging.WARNING for r in caplog.records)


async def test_pat_and_access_token_stay_out_of_errors_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = PatServer(lifetimes=[300], reject=5)

    def handler(request: httpx.Request) -> httpx.Response:
        response = server(request)
        if response.status_code == 401:
            return answer({"detail": f"not valid: {request.headers.get('Authorization')}"}, 401)
        return response

    async with client(handler, PAT) as ls:
        with pytest.raises(LabelStudioHTTPError) as caught:
            await ls.get_project(1)
        texts = [str(caught.value), repr(ls), caplog.text]
    for secret in [PAT, *server.issued]:
        assert all(secret not in text for text in texts)


async def test_download_redirect_loop_is_an_image_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "/data/upload/1/a.png"})

    async with client(handler) as ls:
        with pytest.raises(ImageDownloadError) as caught:
            await ls.download_image("/data/upload/1/a.png")
    assert caught.value.reason == "more than 5 redirects"


async def test_import_of_no_predictions_sends_nothing() -> None:
    async with client(lambda request: answer({}, 500)) as ls:
        assert await ls.import_predictions(3, []) == 0
