"""A task's image, fetched under labelloop's image fetch policy.

Whoever can import tasks into Label Studio chooses the URLs labelloop fetches, so every hop
(the first URL and each redirect, re-checked one by one) must pass:

- only ``http`` and ``https`` (``file://``, ``ftp://``, ... are refused);
- on Label Studio's own origin, only its media paths get the API credentials
  (``MEDIA_PATHS``); ``/api/`` is refused outright (an image URL has no business there);
  other paths are fetched without credentials;
- any other host must resolve only to addresses labelloop may reach: link-local
  (169.254.0.0/16: cloud metadata), multicast, unspecified and reserved addresses never;
  loopback and private ones only where Label Studio itself is, or with ``allow_private``;
- the whole fetch, every hop and every byte, within ``timeout`` seconds and ``max_bytes``.

A refusal says only ``REFUSED`` to the caller (it ends up on the status page, where the
difference between "refused" and "connection refused" would map the internal network); the
rule that refused it is logged for the operator, without the URL's query string.

A host is resolved when it is checked and again when connected to: one that answers
differently in between (DNS rebinding) is not caught here; see the README's security section.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from service.labelstudio.errors import ImageDownloadError, LabelStudioUnavailable, Unsendable
from service.labelstudio.media import origin, read_capped, shown
from service.labelstudio.transport import Transport

logger = logging.getLogger(__name__)

REFUSED = "refused by the image fetch policy"
MAX_REDIRECTS = 5
MEDIA_PATHS = re.compile(r"^/(?:data/upload/|data/local-files/|tasks/\d+/resolve/|storage-data/)")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Awaitable[list[str]]]


async def resolve_host(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Refused(Exception):
    """A hop broke the policy; the message (the rule) is for the operator's log only."""


@dataclass(frozen=True)
class Hop:
    url: httpx.URL
    credentials: bool


class ImageFetcher:
    """Downloads image URIs for one Label Studio (``transport``) under the policy."""

    def __init__(
        self,
        transport: Transport,
        *,
        timeout: float = 30.0,
        allow_private: bool = False,
        resolve: Resolve = resolve_host,
    ) -> None:
        self._http = transport
        self._timeout = timeout
        self._allow_private = allow_private
        self._resolve = resolve
        self._own_addresses: frozenset[Address] | None = None

    async def fetch(self, first: httpx.URL, *, max_bytes: int) -> bytes:
        """The image's bytes; ImageDownloadError with a short reason otherwise."""
        where = f"GET {shown(first)}"
        try:
            async with asyncio.timeout(self._timeout):
                return await self._follow(first, max_bytes)
        except TimeoutError:
            raise ImageDownloadError(f"timeout (over {self._timeout:g} s in all)", where) from None
        except Refused as exc:
            logger.warning("image fetch refused: %s", exc)
            raise ImageDownloadError(REFUSED, where) from None

    async def _follow(self, url: httpx.URL, max_bytes: int) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            hop = await self.check(url)
            where = f"GET {shown(hop.url)}"
            try:
                response = await self._http.send("GET", hop.url, where, auth=hop.credentials,
                                                 stream=True)  # fmt: skip
            except LabelStudioUnavailable as exc:
                reason = str(exc).removeprefix(f"{where}: ")
                raise ImageDownloadError(f"unavailable: {reason}", where) from None
            except Unsendable as exc:
                raise ImageDownloadError(str(exc).removeprefix(f"{where}: "), where) from None
            try:
                location = response.headers.get("location")
                if response.is_redirect and location:
                    try:
                        url = hop.url.join(location)
                    except httpx.InvalidURL:
                        raise ImageDownloadError("invalid redirect", where) from None
                    continue
                return await read_capped(response, max_bytes, where)
            except httpx.TimeoutException:
                raise ImageDownloadError("timeout", where) from None
            except httpx.TransportError as exc:
                raise ImageDownloadError(f"unavailable: {type(exc).__name__}", where) from None
            finally:
                await response.aclose()
        raise ImageDownloadError(f"more than {MAX_REDIRECTS} redirects", f"GET {shown(url)}")

    async def check(self, url: httpx.URL) -> Hop:
        """The hop to make for ``url``, or Refused saying which rule it broke."""
        if url.scheme not in ("http", "https"):
            raise Refused(f"scheme {url.scheme or '(none)'} in {shown(url)}")
        if not url.host:
            raise Refused(f"no host in {shown(url)}")
        base = self._http.base_url
        if origin(url) == origin(base):
            path = url.path
            if path == "/api" or path.startswith("/api/"):
                raise Refused(f"Label Studio API path {shown(url)}")
            return Hop(url, credentials=bool(MEDIA_PATHS.match(path)))
        for address in await self._addresses(url):
            if rule := self._forbidden(address):
                if rule == "private" and address in await self._label_studio_addresses():
                    continue  # Label Studio's own machine: as reachable as Label Studio is
                raise Refused(f"{rule} address {address} for {shown(url)}")
        return Hop(url, credentials=False)

    async def _addresses(self, url: httpx.URL) -> list[Address]:
        host = url.host
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            found = await self._resolve(host, port)
        except OSError:
            raise ImageDownloadError(
                "unavailable: cannot resolve host", f"GET {shown(url)}"
            ) from None
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
        if not addresses:
            raise ImageDownloadError("unavailable: cannot resolve host", f"GET {shown(url)}")
        return addresses

    def _forbidden(self, address: Address) -> str | None:
        """Which rule ``address`` breaks, if any: "link-local", ..., or "private"."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if address.is_link_local:
            return "link-local"
        if address.is_multicast:
            return "multicast"
        if address.is_unspecified:
            return "unspecified"
        if address.is_reserved:
            return "reserved"
        if (address.is_loopback or address.is_private) and not self._allow_private:
            return "private"
        return None

    async def _label_studio_addresses(self) -> frozenset[Address]:
        if self._own_addresses is None:
            base = self._http.base_url
            try:
                own = await self._addresses(base)
            except ImageDownloadError:
                own = []
            self._own_addresses = frozenset(own)
        return self._own_addresses
