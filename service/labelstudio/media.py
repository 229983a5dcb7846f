"""Where a task's image lives: Label Studio's own media, another host, or cloud storage that
Label Studio resolves; and an image answer read within its size cap.

``shown`` is how URLs appear in logs and messages: no user info, no query string (presigned
URLs carry their signature there).
"""

from __future__ import annotations

import base64

import httpx

from service.labelstudio.errors import ImageDownloadError

CLOUD_SCHEMES = frozenset({"s3", "gs", "gcs", "azure-blob"})


def shown(url: httpx.URL) -> str:
    """A URL fit for logs and messages: no user info, no query string."""
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def image_target(base: httpx.URL, uri: str, task_id: int | None) -> tuple[httpx.URL, bool]:
    """(url, send Label Studio's credentials) for an image URI of a task's data; ``base`` is
    Label Studio's URL. Raises ImageDownloadError for what cannot be fetched."""
    root = str(base).rstrip("/")
    if uri.startswith("/") and not uri.startswith("//"):
        return httpx.URL(root + uri), True
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        url = httpx.URL(uri)
        return url, origin(url) == origin(base)
    if scheme in CLOUD_SCHEMES:
        if task_id is None:
            raise ImageDownloadError(f"unsupported uri scheme {scheme} without task id")
        fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
        return httpx.URL(f"{root}/tasks/{task_id}/resolve/", params={"fileuri": fileuri}), True
    raise ImageDownloadError(f"unsupported uri scheme {scheme or '(none)'}")


async def read_capped(response: httpx.Response, max_bytes: int, where: str) -> bytes:
    """A streamed image answer's body, refused as soon as it passes ``max_bytes``."""
    too_large = f"too large (> {max_bytes} bytes)"
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
    return b"".join(chunks)
