"""Label Studio credentials: a legacy token as it is, or a personal access token (a JWT refresh
token) traded for short-lived access tokens, refreshed before they expire and after a 401.

No secret goes into ``repr()``; ``secrets()`` lists them so error texts can be scrubbed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Awaitable, Callable

_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_REFRESH_MARGIN = 30.0  # seconds before expiry that an access token is renewed


def jwt_exp(token: str) -> float:
    """The ``exp`` claim of a JWT, read without verifying it; +inf when there is none."""
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error):
        return float("inf")


class Credentials:
    """The ``Authorization`` header for the API. ``refresh(api_key)`` trades a personal access
    token for a new access token (the client's ``POST /api/token/refresh/``)."""

    def __init__(self, api_key: str, refresh: Callable[[str], Awaitable[str]]) -> None:
        self._api_key = api_key
        self._refresh = refresh
        self.is_pat = _JWT.fullmatch(api_key) is not None
        self._access: str | None = None
        self._access_exp = 0.0
        self._lock = asyncio.Lock()

    @property
    def kind(self) -> str:
        return "personal access token" if self.is_pat else "legacy token"

    def __repr__(self) -> str:
        return f"Credentials({self.kind!r})"

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self._api_key, self._access) if s)

    async def header(self) -> dict[str, str]:
        if not self.is_pat:
            return {"Authorization": f"Token {self._api_key}"}
        async with self._lock:
            if self._access is None or self._access_exp - time.time() < _REFRESH_MARGIN:
                await self._renew()
            return {"Authorization": f"Bearer {self._access}"}

    async def refresh_after_401(self, used: dict[str, str]) -> None:
        """Renew the access token that ``used`` carried, unless another call already did."""
        async with self._lock:
            if used.get("Authorization") == f"Bearer {self._access}":
                await self._renew()

    async def _renew(self) -> None:
        access = await self._refresh(self._api_key)
        self._access, self._access_exp = access, jwt_exp(access)
