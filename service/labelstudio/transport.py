"""HTTP to one Label Studio: credentials on every call, transient failures retried with capped
exponential backoff and jitter (never a 4xx), error answers turned into ``errors``' types with
a short, secret-free detail.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from service.labelstudio.errors import (
    LabelStudioError,
    LabelStudioHTTPError,
    LabelStudioUnavailable,
    Unsendable,
)
from service.labelstudio.tokens import Credentials

logger = logging.getLogger(__name__)

_MAX_DELAY = 10.0
_DETAIL_CHARS = 300


def _jitter() -> float:
    return random.uniform(0.5, 1.5)


class Transport:
    """Sends requests to ``url`` (Label Studio's base URL); ``transport`` fakes the network."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None,
        timeout: float,
        retries: int,
        backoff: float,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.base = url.rstrip("/")
        self.base_url = httpx.URL(self.base)
        self.credentials = Credentials(api_key, self._refresh_access)
        self._retries = retries
        self._backoff = backoff
        self._sleep = sleep
        self._client = httpx.AsyncClient(transport=transport, timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- authentication ---------------------------------------------------------------------

    async def _refresh_access(self, api_key: str) -> str:
        """A new access token for the personal access token ``api_key``."""
        where = "POST /api/token/refresh/"
        response = await self.send(
            "POST",
            self.base + "/api/token/refresh/",
            where,
            auth=False,
            json={"refresh": api_key},
        )
        if not response.is_success:
            detail = self.detail(response)
            raise LabelStudioHTTPError(
                response.status_code, f"personal access token refused: {detail}", where
            )
        access = self.decode(response, where).get("access")
        if not isinstance(access, str) or not access:
            raise LabelStudioError(f"{where}: answer has no access token")
        return access

    # -- transport --------------------------------------------------------------------------

    async def send(
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
        wait_s: float | None = None,
    ) -> httpx.Response:
        """Send one request, retrying transient failures; returns any answer below 500.

        ``retry=False`` is for requests that are not idempotent: a timeout may hide a success.
        ``wait_s`` replaces the client's timeout for this request (a slow bulk write).

        With a personal access token a 401 refreshes the access token and resends once.
        A streamed answer must be closed by the caller.
        """
        attempt, refreshed = 0, False
        while True:
            headers = await self.credentials.header() if auth else {}
            extensions = {} if wait_s is None else {"timeout": httpx.Timeout(wait_s).as_dict()}
            request = self._client.build_request(
                method, url, params=params, json=json, headers=headers, extensions=extensions
            )
            try:
                response = await self._client.send(
                    request, stream=stream, follow_redirects=follow_redirects
                )
            except (httpx.UnsupportedProtocol, httpx.TooManyRedirects) as exc:
                raise Unsendable(f"{where}: {type(exc).__name__}") from None
            except httpx.TransportError as exc:
                failure = type(exc).__name__
            else:
                pat = self.credentials.is_pat
                if response.status_code == 401 and auth and pat and not refreshed:
                    await response.aclose()
                    refreshed = True
                    await self.credentials.refresh_after_401(headers)
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

    def detail(self, response: httpx.Response, secrets: Sequence[str] = ()) -> str:
        """A short, secret-free text from an error answer's body."""
        try:
            body: Any = response.json()
            text = body["detail"] if isinstance(body, dict) and "detail" in body else body
            text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
        except (ValueError, UnicodeDecodeError):
            text = response.text
        for secret in (*self.credentials.secrets(), *secrets):
            if secret:
                text = text.replace(secret, "***")
        text = " ".join(text.split())
        return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."

    @staticmethod
    def decode(response: httpx.Response, where: str) -> Any:
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError):
            raise LabelStudioError(f"{where}: answer is not JSON") from None

    async def api(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        secrets: Sequence[str] = (),
        retry: bool = True,
        wait_s: float | None = None,
    ) -> Any:
        """Call the API at ``path``; the decoded JSON answer (None when empty)."""
        where = f"{method} {path}"
        response = await self.send(
            method, self.base + path, where, auth=True, params=params, json=json, retry=retry,
            wait_s=wait_s,
        )  # fmt: skip
        if not response.is_success:
            raise LabelStudioHTTPError(response.status_code, self.detail(response, secrets), where)
        return self.decode(response, where) if response.content else None

    async def delete(self, path: str) -> bool:
        """DELETE ``path``; False when it was already gone (404: what a delete wants too)."""
        try:
            await self.api("DELETE", path)
        except LabelStudioHTTPError as exc:
            if exc.status_code == 404:
                return False
            raise
        return True

    async def api_dict(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        data = await self.api(method, path, **kwargs)
        if not isinstance(data, dict):
            raise LabelStudioError(f"{method} {path}: expected a JSON object")
        return data

    async def api_list(self, method: str, path: str, **kwargs: Any) -> list[dict[str, Any]]:
        data = await self.api(method, path, **kwargs)
        if not isinstance(data, list):
            raise LabelStudioError(f"{method} {path}: expected a JSON list")
        return data
