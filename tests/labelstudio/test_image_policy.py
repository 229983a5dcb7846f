"""The image fetch policy against hostile task URLs: each is refused with the expected reason,
before any request leaves for a forbidden address, and no credential goes anywhere but Label
Studio's media paths."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from service.labelstudio.client import LabelStudio
from service.labelstudio.errors import ImageDownloadError
from service.labelstudio.image_fetch import REFUSED
from tests.fake_dns import PUBLIC, FakeDNS

pytestmark = pytest.mark.anyio

LS = "http://ls.test:8080"
KEY = "0123456789abcdef0123456789abcdef01234567"
LS_ADDRESS = "10.0.0.5"  # Label Studio on a private network, as in most deployments
DNS = {
    "ls.test": [LS_ADDRESS],
    "localhost": ["127.0.0.1", "::1"],
    "cdn.example": [PUBLIC],
    "redis.internal": ["10.0.0.9"],
    "minio.internal": [LS_ADDRESS],  # on Label Studio's machine
    "rebound.example": [PUBLIC, "127.0.0.1"],  # one bad answer is enough to refuse
    "metadata.example": ["169.254.169.254"],
}


def server(seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    """cdn.example redirects /to/<url>; everything else answers an image."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.startswith("/to/"):
            target = request.url.path.removeprefix("/to/").replace("|", "/")
            return httpx.Response(302, headers={"Location": target})
        return httpx.Response(200, content=b"PNG")

    return handle


def client(seen: list[httpx.Request], **kwargs: object) -> LabelStudio:
    dns = FakeDNS(DNS)
    dns.names["nowhere.invalid"] = []
    return LabelStudio(LS, KEY, transport=httpx.MockTransport(server(seen)), resolve=dns, **kwargs)  # type: ignore[arg-type]


def via(url: str) -> str:
    """A public URL that redirects to ``url``."""
    return "https://cdn.example/to/" + url.replace("/", "|")


HOSTILE = [
    # (task data URI, reason, requests that may be made before the refusal)
    ("http://169.254.169.254/latest/meta-data/", REFUSED, 0),
    ("http://metadata.example/latest/meta-data/", REFUSED, 0),
    ("http://[::ffff:169.254.169.254]/latest/", REFUSED, 0),
    ("http://[fe80::1]/x.png", REFUSED, 0),
    ("http://224.0.0.1/x.png", REFUSED, 0),
    ("http://0.0.0.0:8080/x.png", REFUSED, 0),
    ("http://127.0.0.1:6379/x.png", REFUSED, 0),
    ("http://localhost:6379/x.png", REFUSED, 0),
    ("http://nowhere.invalid/x.png", "unavailable: cannot resolve host", 0),
    ("http://redis.internal:6379/x.png", REFUSED, 0),
    ("http://rebound.example/x.png", REFUSED, 0),
    (via("http://169.254.169.254/latest/meta-data/"), REFUSED, 1),
    (via("http://127.0.0.1:5432/"), REFUSED, 1),
    (via("http://redis.internal/x.png"), REFUSED, 1),
    (f"{LS}/api/users/", REFUSED, 0),
    (f"{LS}/api", REFUSED, 0),
    (via(f"{LS}/api/users/"), REFUSED, 1),
    ("file:///etc/passwd", "unsupported uri scheme file", 0),
    ("gopher://cdn.example/x", "unsupported uri scheme gopher", 0),
    (via("file:///etc/passwd"), REFUSED, 1),
    (via("ftp://cdn.example/x.png"), REFUSED, 1),
]


@pytest.mark.parametrize(("uri", "reason", "sent"), HOSTILE)
async def test_hostile_url_is_refused_before_reaching_it(uri: str, reason: str, sent: int) -> None:
    seen: list[httpx.Request] = []
    async with client(seen) as ls:
        with pytest.raises(ImageDownloadError) as caught:
            await ls.download_image(uri, task_id=7)
    assert caught.value.reason == reason
    assert len(seen) == sent  # the forbidden hop itself was never sent
    assert all("authorization" not in r.headers for r in seen)
    assert all(KEY not in str(r.url) for r in seen)


async def test_refusal_names_the_rule_in_the_log_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with client([]) as ls:
        with pytest.raises(ImageDownloadError) as caught:
            await ls.download_image("http://redis.internal:6379/x.png?sig=s3cr3t")
    assert caught.value.reason == REFUSED and "10.0.0.9" not in str(caught.value)
    assert "private address 10.0.0.9 for http://redis.internal:6379/x.png" in caplog.text
    assert "s3cr3t" not in caplog.text


@pytest.mark.parametrize(
    ("uri", "credentials"),
    [
        ("/data/upload/3/x.png", True),
        ("/data/local-files/?d=dir/x.png", True),
        (f"{LS}/storage-data/uploaded/?filepath=x.png", True),
        ("s3://bucket/x.png", True),  # through /tasks/7/resolve/
        (f"{LS}/static/x.png", False),  # Label Studio's origin, not its media: no key
        ("http://minio.internal:9000/b/x.png", False),  # private, but Label Studio's machine
        ("https://cdn.example/x.png", False),
        (via(f"{LS}/data/upload/3/x.png"), True),  # to Label Studio's media: its key, there only
    ],
)
async def test_allowed_url_gets_credentials_only_on_media_paths(
    uri: str, credentials: bool
) -> None:
    seen: list[httpx.Request] = []
    async with client(seen) as ls:
        assert await ls.download_image(uri, task_id=7) == b"PNG"
    last = seen[-1]
    assert ("authorization" in last.headers) is credentials
    if credentials:
        assert last.url.host == "ls.test"
    assert all("authorization" not in r.headers for r in seen if r.url.host != "ls.test")


async def test_allow_private_opens_private_but_never_link_local() -> None:
    seen: list[httpx.Request] = []
    async with client(seen, allow_private_images=True) as ls:
        assert await ls.download_image("http://redis.internal/x.png") == b"PNG"
        assert await ls.download_image("http://127.0.0.1:9000/x.png") == b"PNG"
        with pytest.raises(ImageDownloadError) as caught:
            await ls.download_image("http://169.254.169.254/latest/")
    assert caught.value.reason == REFUSED and len(seen) == 2


class Drip(httpx.AsyncByteStream):
    """A byte at a time, each one well inside a per-read timeout, never ending."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.01)
            yield b"x"


async def test_a_drip_fed_image_stops_at_the_total_deadline() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Drip())

    transport = httpx.MockTransport(handle)
    async with LabelStudio(LS, KEY, transport=transport, image_timeout=0.3) as ls:
        with pytest.raises(ImageDownloadError) as caught:
            await ls.download_image("/data/upload/3/slow.png")
    assert caught.value.reason == "timeout (over 0.3 s in all)"


async def test_redirect_loop_ends() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "/data/upload/3/x.png"})

    async with LabelStudio(LS, KEY, transport=httpx.MockTransport(handle)) as ls:
        with pytest.raises(ImageDownloadError) as caught:
            await ls.download_image("/data/upload/3/x.png")
    assert caught.value.reason == "more than 5 redirects"
