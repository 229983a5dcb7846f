"""Logging for people and for machines: text or one JSON object per line, with request ids.

Every line passes ``service.redact`` on its way out, whichever logger made it (httpx and
uvicorn included), so no signed URL, token or configured secret reaches a log. httpx's
per-request INFO lines are turned off: one line per image is noise, not information.

Every HTTP request gets an id (the caller's ``X-Request-ID`` when it sends a sane one, else a
new one), echoed in the answer's header and attached to every log record made while serving
it, so one webhook can be followed through the log.
"""

import contextvars
import itertools
import json
import logging
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.redact import Redactor

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SANE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
QUIET_LOGGERS = ("httpx", "httpcore")  # one INFO line per request: warnings only


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, traceback included, redacted."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__(TEXT_FORMAT)
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; message and traceback redacted."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    log_format: str,
    level: int = logging.INFO,
    *,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> None:
    """Root logging for the CLI: ``text`` (the default) or ``json``, with ``secrets`` (the
    configured API key, tokens, webhook secret) and recognisable credentials redacted."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    redact = Redactor(secrets)
    formatter = JsonFormatter(redact) if log_format == "json" else TextFormatter(redact)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


class RequestIdMiddleware:
    """Pure ASGI (no body buffering): sets the request id and echoes it as X-Request-ID.

    It sits in front of every webhook, so it is kept cheap: generated ids are a random
    per-process prefix and a counter (no ``os.urandom`` per request), and the caller's header
    is found without building a dict of all headers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
                break
        if not _SANE.match(request_id):
            request_id = f"{self._prefix}{next(self._counter) & 0xFFFFFFFF:08x}"
        header = (b"x-request-id", request_id.encode())
        token = REQUEST_ID.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
