"""Structured logs with request ids."""

import io
import json
import logging
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service.logs import JsonFormatter, RequestIdFilter, RequestIdMiddleware

logger = logging.getLogger("tests.logs")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)


async def handler(request: Request) -> PlainTextResponse:
    logger.info("handling %s", request.url.path)
    return PlainTextResponse("ok")


def app() -> Starlette:
    return Starlette(routes=[Route("/x", handler)], middleware=[Middleware(RequestIdMiddleware)])


def test_request_id_is_echoed_and_logged_as_json(captured: io.StringIO) -> None:
    with TestClient(app()) as client:
        given = client.get("/x", headers={"X-Request-ID": "abc-123"})
        fresh = client.get("/x", headers={"X-Request-ID": "bad id with spaces"})
    assert given.headers["x-request-id"] == "abc-123"
    generated = fresh.headers["x-request-id"]
    assert generated != "bad id with spaces" and len(generated) == 16
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [(e["message"], e["request_id"]) for e in lines] == [
        ("handling /x", "abc-123"),
        ("handling /x", generated),
    ]
    assert {"time", "level", "logger"} <= set(lines[0])


def test_outside_a_request_the_id_is_a_dash(captured: io.StringIO) -> None:
    logger.warning("background work")
    assert json.loads(captured.getvalue())["request_id"] == "-"
