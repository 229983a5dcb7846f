"""Label Studio misbehaving under a running training job (worker level).

- The task listing answers 503 twice, then works: the retries carry the job to success.
- Nothing listens at Label Studio's address: the job fails, and its error in status says what
  happened (Label Studio unavailable, connection refused) without a secret in it.
- A personal access token's access JWT expires mid-job (401): labelloop refreshes it once and
  the job goes on; a refused refresh fails the job with a clear, secret-free error.

Retries do not wait here (the client's ``sleep`` is replaced); the Label Studio data is
``tests/fake_labelstudio.py``'s, the faults are wrapped around it.
"""

import base64
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from service.context import Services, open_services
from service.jobs.worker import Worker
from service.labelstudio.client import LabelStudio
from service.settings import DatabaseSettings, LabelStudioSettings, Settings, TrainingSettings
from service.web import status
from storage import jobs, models
from tests.fake_labelstudio import TOKEN, FakeLabelStudio, annotate, first_six

pytestmark = pytest.mark.anyio

LS_URL = "http://ls.test"
Handler = Callable[[httpx.Request], httpx.Response]


def make_jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


PAT = make_jwt({"token_type": "refresh", "exp": 9_999_999_999, "jti": "personal-token"})


async def no_wait(delay: float) -> None:
    return None


@asynccontextmanager
async def worker_services(
    engine: Engine, url: str, key: str, handler: Handler | None
) -> AsyncIterator[Services]:
    """Services on the test database whose Label Studio client answers through ``handler``
    (None: the real network) and retries without waiting."""
    settings = Settings(
        database=DatabaseSettings(url=engine.url.render_as_string(hide_password=False)),
        label_studio=LabelStudioSettings(url=url, api_key=key),
        training=TrainingSettings(threshold=6, weights="none", image_size=64, device="cpu"),
    )
    transport = None if handler is None else httpx.MockTransport(handler)
    async with open_services(settings, transport=transport) as services:
        default_client = services.label_studio
        services.label_studio = LabelStudio(url, key, transport=transport, sleep=no_wait)
        try:
            yield services
        finally:
            await services.label_studio.aclose()
            services.label_studio = default_client


async def run_one_job(services: Services, fake: FakeLabelStudio) -> Any:
    """Six webhooks of annotations Label Studio holds, then the training they trigger (which
    learns the project first: it was never caught up, so the listing is in the job)."""
    annotate(services, *first_six(), fake=fake)
    # The training, and the push that tasks learned during a training queue.
    assert await Worker(services).run_until_idle() >= 1
    with services.engine.begin() as conn:
        return next(job for job in jobs.recent(conn, 1) if job.kind != "push")


def status_text(services: Services) -> str:
    with services.engine.begin() as conn:
        return json.dumps(status.project_status(conn, 1))


# ---------------------------------------------------------------------------------------------
# 503, 503, then the listing works
# ---------------------------------------------------------------------------------------------


async def test_listing_503_twice_then_ok(
    engine: Engine, fake: FakeLabelStudio, caplog: pytest.LogCaptureFixture
) -> None:
    listing: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/tasks/" and request.url.params.get("page") == "1":
            listing.append(len(listing))
            if len(listing) <= 2:
                return httpx.Response(503, text="Service Temporarily Unavailable")
        return fake.handle(request)

    caplog.set_level(logging.WARNING, logger="service.labelstudio")
    async with worker_services(engine, LS_URL, TOKEN, handler) as services:
        job = await run_one_job(services, fake)
        with services.engine.begin() as conn:
            active = models.active(conn, 1)

    assert job.status == "succeeded", job.error
    assert len(listing) == 3
    assert active is not None and active.version == job.model_version
    assert sorted(p["task"] for p in fake.predictions) == [7, 8, 9, 10]
    retries = [r.getMessage() for r in caplog.records if "GET /api/tasks/" in r.getMessage()]
    assert len(retries) == 2 and all("http 503" in m for m in retries), retries


# ---------------------------------------------------------------------------------------------
# connection refused throughout
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback address where nothing listens: the port is bound (so no one else takes it)
    but not listening, so every connect is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("key", [TOKEN, PAT], ids=["legacy-token", "personal-access-token"])
async def test_connection_refused_fails_the_job_with_a_clear_error(
    engine: Engine,
    fake: FakeLabelStudio,
    refused_url: str,
    key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with worker_services(engine, refused_url, key, None) as services:
        started = time.monotonic()
        job = await run_one_job(services, fake)
        elapsed = time.monotonic() - started
        shown = status_text(services)

    assert job.status == "failed"
    assert job.error.startswith("LabelStudioUnavailable: ")
    assert "ConnectError" in job.error and "after 4 attempts" in job.error
    assert job.error in shown  # status carries it
    assert elapsed < 30
    for text in (job.error, shown, caplog.text):
        assert key not in text
        assert key.split(".")[-1] not in text  # not even a JWT's signature part


# ---------------------------------------------------------------------------------------------
# personal access tokens: an access JWT expires mid-job
# ---------------------------------------------------------------------------------------------


class TokenLabelStudio:
    """Label Studio's JWT auth in front of the fake: refresh with the PAT, then Bearer access
    tokens; ``expire_at_listing`` expires the current access token at the first task listing
    (as a 5-minute access token does while a job runs)."""

    def __init__(self, fake: FakeLabelStudio, *, expire_at_listing: bool, refuse: bool = False):
        self.fake = fake
        self.expire_at_listing = expire_at_listing
        self.refuse = refuse
        self.issued: list[str] = []
        self.expired: set[str] = set()
        self.seen: list[tuple[str, str]] = []  # (path, Authorization) of every API call

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/token/refresh/":
            if self.refuse or json.loads(request.content).get("refresh") != PAT:
                return httpx.Response(
                    401, json={"detail": "Token is blacklisted", "code": "token_not_valid"}
                )
            access = make_jwt(
                {"token_type": "access", "exp": int(time.time()) + 300, "n": len(self.issued)}
            )
            self.issued.append(access)
            return httpx.Response(200, json={"access": access})
        authorization = request.headers.get("authorization", "")
        self.seen.append((request.url.path, authorization))
        token = authorization.removeprefix("Bearer ")
        if token not in self.issued or token in self.expired:
            return httpx.Response(
                401,
                json={
                    "detail": "Given token not valid for any token type",
                    "code": "token_not_valid",
                },
            )
        if self.expire_at_listing and request.url.path == "/api/tasks/" and not self.expired:
            self.expired.add(token)
            return httpx.Response(
                401,
                json={
                    "detail": "Given token not valid for any token type",
                    "code": "token_not_valid",
                },
            )
        headers = request.headers.copy()
        headers["authorization"] = f"Token {TOKEN}"
        forwarded = httpx.Request(
            request.method, request.url, headers=headers, content=request.content
        )
        return self.fake.handle(forwarded)


async def test_expired_access_token_is_refreshed_and_the_job_goes_on(
    engine: Engine, fake: FakeLabelStudio, caplog: pytest.LogCaptureFixture
) -> None:
    ls = TokenLabelStudio(fake, expire_at_listing=True)
    caplog.set_level(logging.DEBUG)
    async with worker_services(engine, LS_URL, PAT, ls) as services:
        job = await run_one_job(services, fake)

    assert job.status == "succeeded", job.error
    assert len(ls.issued) == 2  # the first exchange, and one refresh after the 401
    listings = [auth for path, auth in ls.seen if path == "/api/tasks/"]
    assert listings[:2] == [f"Bearer {ls.issued[0]}", f"Bearer {ls.issued[1]}"]
    assert all(auth != f"Bearer {PAT}" for _, auth in ls.seen)  # the PAT is never a Bearer
    assert sorted(p["task"] for p in fake.predictions) == [7, 8, 9, 10]
    for secret in (PAT, *ls.issued):
        assert secret not in caplog.text


async def test_refused_personal_access_token_fails_the_job_without_leaking_it(
    engine: Engine, fake: FakeLabelStudio, caplog: pytest.LogCaptureFixture
) -> None:
    ls = TokenLabelStudio(fake, expire_at_listing=False, refuse=True)
    caplog.set_level(logging.DEBUG)
    async with worker_services(engine, LS_URL, PAT, ls) as services:
        job = await run_one_job(services, fake)
        shown = status_text(services)

    assert job.status == "failed"
    assert "personal access token refused" in job.error
    assert "401" in job.error
    assert ls.seen == []  # nothing was called without a valid access token
    for text in (job.error, shown, caplog.text):
        assert PAT not in text
