"""The one Label Studio REST client of labelloop: HTTP and Label Studio, no database, no model.

Errors are in ``service.labelstudio.errors``, credentials in ``tokens``, image URLs in ``media``.
No secret (API key, access token, webhook header values) goes into an exception, a log record
or ``repr()``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx

from service.labelstudio.errors import (
    ImageDownloadError,
    LabelStudioError,
    LabelStudioHTTPError,
    WebhookRefused,
)
from service.labelstudio.image_fetch import ImageFetcher, Resolve, resolve_host
from service.labelstudio.media import image_target, shown
from service.labelstudio.predictions import PredictionsAPI
from service.labelstudio.transport import Transport
from service.labelstudio.views import ViewsAPI

WEBHOOK_ACTIONS: tuple[str, ...] = (
    "ANNOTATION_CREATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_DELETED",
    "TASKS_CREATED",
    "TASKS_DELETED",
    "PROJECT_UPDATED",
)


def _tasks_after(task_id: int) -> str:
    """The Data Manager query for tasks whose id is above ``task_id``, in id order."""
    return json.dumps(
        {
            "filters": {
                "conjunction": "and",
                "items": [
                    {
                        "filter": "filter:tasks:id",
                        "operator": "greater",
                        "type": "Number",
                        "value": task_id,
                    }
                ],
            },
            "ordering": ["tasks:id"],
        },
        separators=(",", ":"),
    )


_SSRF = re.compile(r"reserved|private|network address|not allowed|ssrf", re.IGNORECASE)


class LabelStudio(PredictionsAPI, ViewsAPI):
    """Async client for one Label Studio instance; share one per process and ``aclose()`` it.

    Its predictions endpoints are in ``PredictionsAPI``, its Data Manager tabs in ``ViewsAPI``."""

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
        image_timeout: float = 30.0,
        allow_private_images: bool = False,
        resolve: Resolve = resolve_host,
    ) -> None:
        """``image_timeout``, ``allow_private_images``: the image fetch policy's settings
        (``[images]``); ``resolve`` looks host names up (tests fake it with ``transport``)."""
        self._http = Transport(
            url,
            api_key,
            transport=transport,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            sleep=sleep,
        )
        self._images = ImageFetcher(
            self._http, timeout=image_timeout, allow_private=allow_private_images, resolve=resolve
        )

    def __repr__(self) -> str:
        return (
            f"LabelStudio(url={shown(self._http.base_url)!r}, auth={self._http.credentials.kind!r})"
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> LabelStudio:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- API --------------------------------------------------------------------------------

    async def get_project(self, project_id: int) -> dict[str, Any]:
        return await self._http.api_dict("GET", f"/api/projects/{project_id}/")

    async def iter_tasks(
        self, project_id: int, *, page_size: int = 100, with_annotations: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """Every task of the project, in id order: id, data and counts, plus its annotations
        (and predictions) with ``with_annotations`` (Label Studio's ``fields=all``).

        Pages by id, not by offset: each request asks for the first ``page_size`` tasks whose id
        is above the last one seen (a Data Manager filter on ``/api/tasks/``). A task deleted
        mid-listing cannot shift a page and hide the task behind it, as page numbers did.
        """
        after = 0
        while True:
            params: dict[str, str | int] = {
                "project": project_id,
                "page": 1,
                "page_size": page_size,
                "query": _tasks_after(after),
            }
            if with_annotations:
                params["fields"] = "all"
            data = await self._http.api_dict("GET", "/api/tasks/", params=params)
            tasks = data.get("tasks") or []
            for task in tasks:
                task_id = task.get("id") if isinstance(task, dict) else None
                if not isinstance(task_id, int) or task_id <= after:
                    # Label Studio ignored the filter or the ordering: paging on would repeat
                    # or skip tasks, so stop rather than answer a wrong list.
                    raise LabelStudioError(
                        f"GET /api/tasks/ of project {project_id}: tasks out of id order "
                        f"(id {task_id!r} after {after}); this Label Studio does not filter "
                        "tasks by id"
                    )
                after = task_id
                yield task
            if len(tasks) < page_size:
                return

    async def list_webhooks(self, project_id: int) -> list[dict[str, Any]]:
        hooks = await self._http.api_list("GET", "/api/webhooks/", params={"project": project_id})
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
                return await self._http.api_dict(
                    "POST", "/api/webhooks/", json=body, secrets=secrets
                ), True
            hook = await self._http.api_dict(
                "PATCH", f"/api/webhooks/{same[0]['id']}/", json=body, secrets=secrets
            )
        except LabelStudioHTTPError as exc:
            if exc.status_code == 403 and _SSRF.search(exc.detail):
                raise WebhookRefused(
                    f"Label Studio refused the webhook URL {shown(httpx.URL(url))} "
                    f"({exc.detail}). "
                    "Since 1.23.1 it blocks webhooks to loopback and private addresses. If Label "
                    "Studio and labelloop share one host or a private network, start Label Studio "
                    "with SSRF_PROTECTION_ENABLED=false; otherwise set [webhook] url to an address "
                    "Label Studio may call."
                ) from exc
            raise
        for duplicate in same[1:]:
            await self._http.delete(f"/api/webhooks/{duplicate['id']}/")
        return hook, False

    async def set_model_version(self, project_id: int, version: str) -> None:
        """Show ``version``'s predictions to annotators; push the predictions first."""
        await self._http.api(
            "PATCH", f"/api/projects/{project_id}/", json={"model_version": version}
        )

    # -- images -----------------------------------------------------------------------------

    async def download_image(
        self, uri: str, *, task_id: int | None = None, max_bytes: int = 50 * 2**20
    ) -> bytes:
        """The bytes of an image named in a task's data, at most ``max_bytes`` of them, under
        the image fetch policy (``image_fetch``): Label Studio's credentials only for its own
        media paths, no internal addresses, one deadline for the whole download."""
        try:
            url, _ = image_target(self._http.base_url, uri, task_id)
        except httpx.InvalidURL:
            raise ImageDownloadError("invalid url") from None
        return await self._images.fetch(url, max_bytes=max_bytes)
