"""The one Label Studio REST client of labelloop: HTTP and Label Studio, no database, no model.

Errors::

    LabelStudioError
     ├── LabelStudioHTTPError     a 4xx answer (never retried) or another final error answer
     ├── LabelStudioUnavailable   connect errors, timeouts or 5xx outlasted the retries
     ├── WebhookRefused           Label Studio's SSRF protection refused the webhook URL
     └── ImageDownloadError       an image could not be fetched (``reason`` says why)

No secret (API key, access token, webhook header values) goes into an exception, a log record
or ``repr()``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

logger = logging.getLogger(__name__)

WEBHOOK_ACTIONS: tuple[str, ...] = (
    "ANNOTATION_CREATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_DELETED",
    "TASKS_CREATED",
    "TASKS_DELETED",
    "PROJECT_UPDATED",
)

CLOUD_SCHEMES = frozenset({"s3", "gs", "gcs", "azure-blob"})
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_SSRF = re.compile(r"reserved|private|network address|not allowed|ssrf", re.IGNORECASE)
_MAX_DELAY = 10.0
_REFRESH_MARGIN = 30.0
_DETAIL_CHARS = 300


class LabelStudioError(Exception):
    """Root of this module's errors."""


class LabelStudioHTTPError(LabelStudioError):
    """Label Studio answered with an error status that is not worth retrying."""

    def __init__(self, status_code: int, detail: str, where: str = "") -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"{where} -> {status_code}: {detail}" if where else detail)


class LabelStudioUnavailable(LabelStudioError):
    """Transient failures (connect errors, timeouts, 5xx) outlasted the retries."""


class WebhookRefused(LabelStudioError):
    """Label Studio refused to save the webhook because of its SSRF protection."""


class ImageDownloadError(LabelStudioError):
    """An image could not be downloaded; ``reason`` is short and safe to show."""

    def __init__(self, reason: str, where: str = "") -> None:
        self.reason = reason
        super().__init__(f"cannot download {where}: {reason}" if where else reason)


class _Unsendable(LabelStudioError):
    """The request cannot succeed however often it is sent (bad scheme, redirect loop)."""


def _jitter() -> float:
    return random.uniform(0.5, 1.5)


def _jwt_exp(token: str) -> float:
    """The ``exp`` claim of a JWT, read without verifying it; +inf when there is none."""
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error):
        return float("inf")


def _shown(url: httpx.URL) -> str:
    """A URL fit for logs and messages: no user info, no query string."""
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


class LabelStudio:
    """Async client for one Label Studio instance; share one per process and ``aclose()`` it."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._base = url.rstrip("/")
        self._base_url = httpx.URL(self._base)
        self._api_key = api_key
        self._is_pat = _JWT.fullmatch(api_key) is not None
        self._access: str | None = None
        self._access_exp = 0.0
        self._lock = asyncio.Lock()
        self._retries = retries
        self._backoff = backoff
        self._sleep = sleep
        self._client = httpx.AsyncClient(transport=transport, timeout=timeout)

    def __repr__(self) -> str:
        kind = "personal access token" if self._is_pat else "legacy token"
        return f"LabelStudio(url={_shown(self._base_url)!r}, auth={kind!r})"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> LabelStudio:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- authentication ---------------------------------------------------------------------

    async def _auth_header(self) -> dict[str, str]:
        if not self._is_pat:
            return {"Authorization": f"Token {self._api_key}"}
        async with self._lock:
            if self._access is None or self._access_exp - time.time() < _REFRESH_MARGIN:
                await self._refresh()
            return {"Authorization": f"Bearer {self._access}"}

    async def _refresh_after_401(self, used: str) -> None:
        async with self._lock:
            if used == f"Bearer {self._access}":  # nobody refreshed it meanwhile
                await self._refresh()

    async def _refresh(self) -> None:
        where = "POST /api/token/refresh/"
        response = await self._send(
            "POST",
            self._base + "/api/token/refresh/",
            where,
            auth=False,
            json={"refresh": self._api_key},
        )
        if not response.is_success:
            detail = self._detail(response)
            raise LabelStudioHTTPError(
                response.status_code, f"personal access token refused: {detail}", where
            )
        access = self._decode(response, where).get("access")
        if not isinstance(access, str) or not access:
            raise LabelStudioError(f"{where}: answer has no access token")
        self._access, self._access_exp = access, _jwt_exp(access)

    # -- transport --------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str | httpx.URL,
        where: str,
        *,
        auth: bool,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        stream: bool = False,
        follow_redirects: bool = False,
        retry: bool = True,
    ) -> httpx.Response:
        """Send one request, retrying transient failures; returns any answer below 500.

        ``retry=False`` is for requests that are not idempotent: a timeout may hide a success.

        With a personal access token a 401 refreshes the access token and resends once.
        A streamed answer must be closed by the caller.
        """
        attempt, refreshed = 0, False
        while True:
            headers = await self._auth_header() if auth else {}
            request = self._client.build_request(
                method, url, params=params, json=json, headers=headers
            )
            try:
                response = await self._client.send(
                    request, stream=stream, follow_redirects=follow_redirects
                )
            except (httpx.UnsupportedProtocol, httpx.TooManyRedirects) as exc:
                raise _Unsendable(f"{where}: {type(exc).__name__}") from None
            except httpx.TransportError as exc:
                failure = type(exc).__name__
            else:
                if response.status_code == 401 and auth and self._is_pat and not refreshed:
                    await response.aclose()
                    refreshed = True
                    await self._refresh_after_401(headers["Authorization"])
                    continue
                if response.status_code < 500:
                    return response
                failure = f"http {response.status_code}"
                await response.aclose()
            if not retry or attempt >= self._retries:
                raise LabelStudioUnavailable(f"{where}: {failure} after {attempt + 1} attempts")
            delay = min(self._backoff * 2**attempt, _MAX_DELAY) * _jitter()
            attempt += 1
            logger.warning(
                "%s failed (%s), attempt %d of %d; retrying in %.2f s",
                where, failure, attempt, self._retries + 1, delay,
            )  # fmt: skip
            await self._sleep(delay)

    def _detail(self, response: httpx.Response, secrets: Sequence[str] = ()) -> str:
        """A short, secret-free text from an error answer's body."""
        try:
            body: Any = response.json()
            text = body["detail"] if isinstance(body, dict) and "detail" in body else body
            text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
        except (ValueError, UnicodeDecodeError):
            text = response.text
        for secret in (self._api_key, self._access, *secrets):
            if secret:
                text = text.replace(secret, "***")
        text = " ".join(text.split())
        return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."

    @staticmethod
    def _decode(response: httpx.Response, where: str) -> Any:
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError):
            raise LabelStudioError(f"{where}: answer is not JSON") from None

    async def _api(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        secrets: Sequence[str] = (),
        retry: bool = True,
    ) -> Any:
        """Call the API at ``path``; the decoded JSON answer (None when empty)."""
        where = f"{method} {path}"
        response = await self._send(
            method, self._base + path, where, auth=True, params=params, json=json, retry=retry
        )
        if not response.is_success:
            raise LabelStudioHTTPError(response.status_code, self._detail(response, secrets), where)
        return self._decode(response, where) if response.content else None

    async def _api_dict(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        data = await self._api(method, path, **kwargs)
        if not isinstance(data, dict):
            raise LabelStudioError(f"{method} {path}: expected a JSON object")
        return data

    async def _api_list(self, method: str, path: str, **kwargs: Any) -> list[dict[str, Any]]:
        data = await self._api(method, path, **kwargs)
        if not isinstance(data, list):
            raise LabelStudioError(f"{method} {path}: expected a JSON list")
        return data

    # -- API --------------------------------------------------------------------------------

    async def get_project(self, project_id: int) -> dict[str, Any]:
        return await self._api_dict("GET", f"/api/projects/{project_id}/")

    async def iter_tasks(
        self, project_id: int, *, page_size: int = 100, with_annotations: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """Every task of the project: id, data and counts, plus its annotations (and
        predictions) with ``with_annotations`` (Label Studio's ``fields=all``)."""
        page, seen = 1, 0
        while True:
            params: dict[str, str | int] = {
                "project": project_id,
                "page": page,
                "page_size": page_size,
            }
            if with_annotations:
                params["fields"] = "all"
            try:
                data = await self._api_dict("GET", "/api/tasks/", params=params)
            except LabelStudioHTTPError as exc:
                if exc.status_code == 404 and page > 1:  # Label Studio's answer past the end
                    return
                raise
            tasks = data.get("tasks") or []
            for task in tasks:
                yield task
            seen += len(tasks)
            total = data.get("total")
            if not tasks or (isinstance(total, int) and seen >= total):
                return
            page += 1

    async def list_webhooks(self, project_id: int) -> list[dict[str, Any]]:
        hooks = await self._api_list("GET", "/api/webhooks/", params={"project": project_id})
        return [hook for hook in hooks if hook.get("project", project_id) == project_id]

    async def ensure_webhook(
        self,
        project_id: int,
        url: str,
        headers: dict[str, str],
        actions: Sequence[str] = WEBHOOK_ACTIONS,
    ) -> tuple[dict[str, Any], bool]:
        """Register the project's webhook to ``url`` once; returns (hook, created)."""
        body = {
            "url": url,
            "headers": dict(headers),
            "send_payload": True,
            "send_for_all_actions": False,
            "actions": list(actions),  # a PATCH without actions clears them
            "is_active": True,
        }
        secrets = tuple(headers.values())
        same = sorted(
            (hook for hook in await self.list_webhooks(project_id) if hook.get("url") == url),
            key=lambda hook: int(hook["id"]),
        )
        try:
            if not same:
                body["project"] = project_id
                return await self._api_dict(
                    "POST", "/api/webhooks/", json=body, secrets=secrets
                ), True
            hook = await self._api_dict(
                "PATCH", f"/api/webhooks/{same[0]['id']}/", json=body, secrets=secrets
            )
        except LabelStudioHTTPError as exc:
            if exc.status_code == 403 and _SSRF.search(exc.detail):
                raise WebhookRefused(
                    f"Label Studio refused the webhook URL {_shown(httpx.URL(url))} "
                    f"({exc.detail}). "
                    "Since 1.23.1 it blocks webhooks to loopback and private addresses. If Label "
                    "Studio and labelloop share one host or a private network, start Label Studio "
                    "with SSRF_PROTECTION_ENABLED=false; otherwise set [webhook] url to an address "
                    "Label Studio may call."
                ) from exc
            raise
        for duplicate in same[1:]:
            try:
                await self._api("DELETE", f"/api/webhooks/{duplicate['id']}/")
            except LabelStudioHTTPError as exc:
                if exc.status_code != 404:  # already gone is fine
                    raise
        return hook, False

    async def list_predictions(self, project_id: int) -> list[dict[str, Any]]:
        return await self._api_list("GET", "/api/predictions/", params={"project": project_id})

    async def import_predictions(
        self, project_id: int, predictions: Sequence[Mapping[str, Any]]
    ) -> int:
        """Bulk-create predictions; returns how many Label Studio created.

        Never retried here: a lost answer may hide a success, and a blind resend would create
        duplicates. The caller re-lists the project's predictions and sends what is missing.
        """
        if not predictions:
            return 0
        path = f"/api/projects/{project_id}/import/predictions"  # no trailing slash in LS
        data = await self._api_dict("POST", path, json=[dict(p) for p in predictions], retry=False)
        return int(data.get("created", 0))

    async def set_model_version(self, project_id: int, version: str) -> None:
        """Show ``version``'s predictions to annotators; push the predictions first."""
        await self._api("PATCH", f"/api/projects/{project_id}/", json={"model_version": version})

    # -- images -----------------------------------------------------------------------------

    def _image_target(self, uri: str, task_id: int | None) -> tuple[httpx.URL, bool]:
        """(url, send auth) for an image URI of a task's data."""
        if uri.startswith("/") and not uri.startswith("//"):
            return httpx.URL(self._base + uri), True
        scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
        if scheme in ("http", "https"):
            url = httpx.URL(uri)
            return url, _origin(url) == _origin(self._base_url)
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise ImageDownloadError(f"unsupported uri scheme {scheme} without task id")
            fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
            url = httpx.URL(f"{self._base}/tasks/{task_id}/resolve/", params={"fileuri": fileuri})
            return url, True
        raise ImageDownloadError(f"unsupported uri scheme {scheme or '(none)'}")

    async def download_image(
        self, uri: str, *, task_id: int | None = None, max_bytes: int = 50 * 2**20
    ) -> bytes:
        """The bytes of an image named in a task's data, at most ``max_bytes`` of them.

        Label Studio's own URLs get the credentials; other hosts never do (httpx also drops
        them when a redirect leaves Label Studio's origin).
        """
        try:
            url, auth = self._image_target(uri, task_id)
        except httpx.InvalidURL:
            raise ImageDownloadError("invalid url") from None
        where = f"GET {_shown(url)}"
        too_large = f"too large (> {max_bytes} bytes)"
        try:
            response = await self._send(
                "GET", url, where, auth=auth, stream=True, follow_redirects=True
            )
        except LabelStudioUnavailable as exc:
            reason = str(exc).removeprefix(f"{where}: ")
            raise ImageDownloadError(f"unavailable: {reason}", where) from None
        except _Unsendable as exc:
            raise ImageDownloadError(str(exc).removeprefix(f"{where}: "), where) from None
        try:
            if not response.is_success:
                raise ImageDownloadError(f"http {response.status_code}", where)
            length = response.headers.get("content-length", "")
            if length.isascii() and length.isdigit() and int(length) > max_bytes:
                raise ImageDownloadError(too_large, where)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise ImageDownloadError(too_large, where)
                chunks.append(chunk)
        except httpx.TimeoutException:
            raise ImageDownloadError("timeout", where) from None
        except httpx.TransportError as exc:
            raise ImageDownloadError(f"unavailable: {type(exc).__name__}", where) from None
        finally:
            await response.aclose()
        return b"".join(chunks)
