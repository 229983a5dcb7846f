"""A small in-memory Label Studio behind ``httpx.MockTransport``, for unit tests.

It answers the calls labelloop makes (project, paged tasks, image downloads, predictions,
model_version) with Label Studio 1.23.2's shapes and refusals, and records what it was sent.
"""

import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image

from service.context import Services
from service.ingest.fold_loop import fold_all
from storage import events
from tests import payloads

TOKEN = "ls-legacy-token"
RED, BLUE = (220, 30, 30), (30, 30, 220)


def color_image(color: tuple[int, int, int], seed: int, size: int = 48) -> bytes:
    """A PNG mostly of ``color`` with a little noise, so images differ but classes separate."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), color)
    pixels = image.load()
    assert pixels is not None
    for _ in range(size * 4):
        x, y = rng.randrange(size), rng.randrange(size)
        pixels[x, y] = tuple(min(255, max(0, c + rng.randint(-60, 60))) for c in color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class FakeLabelStudio:
    project_id: int = 1
    label_config: str = payloads.LABEL_CONFIG
    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    annotations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # by task id
    model_version: str = ""
    downloads: int = 0
    fail_imports: int = 0  # answer this many prediction imports with 503 after storing them
    # Called with n before the n-th (from 0) GET /api/tasks/ is answered: a test changes the
    # project there, as annotators do while a listing runs.
    on_list: Callable[[int], None] | None = None
    # Called with n after the n-th page is read, before it is answered: what changes there is
    # not in that page (a task created right after the last page: after the listing).
    after_list: Callable[[int], None] | None = None
    listings: int = 0
    calls: list[str] = field(default_factory=list)  # "METHOD path?query" of every request
    next_id: int = 0  # the last prediction id given (ids are never reused, as in Label Studio)
    views: dict[int, dict[str, Any]] = field(default_factory=dict)  # Data Manager tabs, by id
    fail_views: bool = False  # answer every /api/dm/views/ call with 500

    def add_prediction(self, prediction: dict[str, Any]) -> dict[str, Any]:
        """Store a prediction as another client (another model, an earlier install) would."""
        self.next_id += 1
        stored = {**prediction, "id": self.next_id}
        self.predictions.append(stored)
        return stored

    def predictions_of(self, version: str) -> dict[int, list[dict[str, Any]]]:
        """Task id -> its predictions of ``version``."""
        found: dict[int, list[dict[str, Any]]] = {}
        for p in self.predictions:
            if p["model_version"] == version:
                found.setdefault(p["task"], []).append(p)
        return found

    def listed_project_predictions(self) -> bool:
        """Whether anyone asked for the whole project's predictions."""
        return any(c.startswith("GET /api/predictions/?project=") for c in self.calls)

    def add_task(self, task_id: int, image: bytes | None) -> None:
        path = f"/data/upload/{self.project_id}/img-{task_id}.png"
        self.tasks[task_id] = {"id": task_id, "project": self.project_id, "data": {"image": path}}
        if image is not None:
            self.files[path] = image

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Token {TOKEN}":
            return httpx.Response(
                401, json={"detail": "Authentication credentials were not provided."}
            )
        path, params = request.url.path, request.url.params
        query = request.url.query.decode()
        self.calls.append(f"{request.method} {path}" + (f"?{query}" if query else ""))
        project_path = f"/api/projects/{self.project_id}/"
        if path == project_path and request.method == "GET":
            body = payloads.project(self.project_id, self.label_config)
            return httpx.Response(200, json={**body, "model_version": self.model_version})
        if path == project_path and request.method == "PATCH":
            version = json.loads(request.content)["model_version"]
            if not any(p["model_version"] == version for p in self.predictions):
                return httpx.Response(400, json={"model_version": ["no predictions"]})
            self.model_version = version
            return httpx.Response(200, json={"id": self.project_id, "model_version": version})
        if path == "/api/tasks/" and _selected(params.get("query")) is not None:
            return self._selected_tasks(_selected(params.get("query")) or [], params)
        if path == "/api/tasks/":
            if self.on_list is not None:
                self.on_list(self.listings)
            after = _id_above(params.get("query"))
            page = self._tasks_page(int(params["page"]), int(params["page_size"]), after)
            if params.get("fields") == "all" and page.status_code == 200:
                body = json.loads(page.content)
                for task in body["tasks"]:
                    task["annotations"] = self.annotations.get(task["id"], [])
                page = httpx.Response(200, json=body)
            if self.after_list is not None:
                self.after_list(self.listings)
            self.listings += 1
            return page
        if path.startswith("/data/upload/"):
            self.downloads += 1
            if path not in self.files:
                return httpx.Response(404, text="not found")
            return httpx.Response(200, content=self.files[path])
        if path == "/api/predictions/" and request.method == "GET":
            if "task" in params:
                task = int(params["task"])
                return httpx.Response(200, json=[p for p in self.predictions if p["task"] == task])
            return httpx.Response(200, json=self.predictions)
        if path.startswith("/api/predictions/") and request.method == "DELETE":
            prediction_id = int(path.rstrip("/").rsplit("/", 1)[1])
            if not any(p["id"] == prediction_id for p in self.predictions):
                return httpx.Response(404, json={"detail": "Not found."})
            self.predictions = [p for p in self.predictions if p["id"] != prediction_id]
            return httpx.Response(204)
        if path == "/api/dm/actions" and request.method == "POST":
            if params.get("id") != "delete_tasks_predictions":
                return httpx.Response(422, json={"detail": "unknown action"})
            included = set(json.loads(request.content)["selectedItems"]["included"])
            before = len(self.predictions)
            self.predictions = [p for p in self.predictions if p["task"] not in included]
            deleted = before - len(self.predictions)
            return httpx.Response(200, json={"processed_items": deleted, "detail": "Deleted"})
        if path == f"{project_path}model-versions/" and request.method == "DELETE":
            version = json.loads(request.content)["model_version"]
            before = len(self.predictions)
            self.predictions = [p for p in self.predictions if p["model_version"] != version]
            if self.model_version == version:
                self.model_version = ""  # as Label Studio does (should_none_model_version)
            return httpx.Response(200, json={"deleted_predictions": before - len(self.predictions)})
        if path == f"{project_path}model-versions/":
            versions = {p["model_version"]: 0 for p in self.predictions}
            for p in self.predictions:
                versions[p["model_version"]] += 1
            if self.model_version and self.model_version not in versions:
                versions[self.model_version] = 0  # Label Studio lists the project's own too
            return httpx.Response(200, json=versions)
        if path == f"{project_path}import/predictions":
            return self._import(json.loads(request.content))
        if path.startswith("/api/dm/views/"):
            return self._views(request)
        return httpx.Response(404, json={"detail": "Not found."})

    def _views(self, request: httpx.Request) -> httpx.Response:
        """Data Manager tabs as Label Studio 1.23.2 keeps them: ``data`` with its ``filters``."""
        if self.fail_views:
            return httpx.Response(500, text="server error")
        path = request.url.path
        if path == "/api/dm/views/" and request.method == "GET":
            project = int(request.url.params["project"])
            return httpx.Response(
                200, json=[v for _, v in sorted(self.views.items()) if v["project"] == project]
            )
        if path == "/api/dm/views/" and request.method == "POST":
            body = json.loads(request.content)
            view_id = max(self.views, default=0) + 1
            self.views[view_id] = {"id": view_id, "project": body["project"], "data": body["data"]}
            return httpx.Response(201, json=self.views[view_id])
        view_id = int(path.rstrip("/").rsplit("/", 1)[1])
        if view_id not in self.views:
            return httpx.Response(404, json={"detail": "Not found."})
        if request.method == "PATCH":
            self.views[view_id]["data"] = json.loads(request.content)["data"]
            return httpx.Response(200, json=self.views[view_id])
        if request.method == "DELETE":
            del self.views[view_id]
            return httpx.Response(204)
        return httpx.Response(405, json={"detail": "Method not allowed."})

    def _tasks_page(self, page: int, size: int, after: int = 0) -> httpx.Response:
        ordered = [self.tasks[k] for k in sorted(self.tasks) if k > after]
        chunk = ordered[(page - 1) * size : page * size]
        if not chunk and page > 1:
            return httpx.Response(404, json={"detail": "Invalid page."})
        return httpx.Response(200, json={"total": len(ordered), "tasks": chunk})

    def _selected_tasks(self, included: list[int], params: Any) -> httpx.Response:
        """The Data Manager's list of the selected tasks (``fields=all``: with predictions)."""
        chosen = [self.tasks[t] for t in sorted(self.tasks) if t in set(included)]
        chosen = chosen[: int(params.get("page_size", 100))]
        if params.get("fields") == "all":
            chosen = [
                {
                    **task,
                    "annotations": self.annotations.get(task["id"], []),
                    "predictions": [p for p in self.predictions if p["task"] == task["id"]],
                }
                for task in chosen
            ]
        return httpx.Response(200, json={"total": len(chosen), "tasks": chosen})

    def _import(self, body: list[dict[str, Any]]) -> httpx.Response:
        for prediction in body:
            if prediction["task"] not in self.tasks:
                return httpx.Response(400, json={"detail": "task not in project"})
        for prediction in body:
            self.next_id += 1
            self.predictions.append({**prediction, "id": self.next_id})
        if self.fail_imports:
            self.fail_imports -= 1
            return httpx.Response(503, text="upstream timeout")  # stored, but the answer is lost
        return httpx.Response(201, json={"created": len(body)})


def _selected(query: str | None) -> list[int] | None:
    """The task ids of a Data Manager query's ``selectedItems`` (``all: false``), else None."""
    if not query:
        return None
    selected = json.loads(query).get("selectedItems")
    if not isinstance(selected, dict) or selected.get("all") is not False:
        return None
    return [int(t) for t in selected.get("included") or []]


def _id_above(query: str | None) -> int:
    """The id of a Data Manager filter ``filter:tasks:id`` ``greater`` in ``query``, else 0."""
    if not query:
        return 0
    items = (json.loads(query).get("filters") or {}).get("items") or []
    for item in items:
        if item.get("filter") == "filter:tasks:id" and item.get("operator") == "greater":
            return int(item["value"])
    return 0


def annotate(
    services: Services,
    *labeled: tuple[int, int, str, str],
    fake: FakeLabelStudio | None = None,
) -> None:
    """Post ANNOTATION_* events (annotation id, task id, label, updated_at) and fold them;
    with ``fake``, Label Studio holds them too (what a catch-up then lists)."""
    with services.engine.begin() as conn:
        for annotation_id, task_id, label, updated_at in labeled:
            body = payloads.annotation_event(annotation_id, task_id, label, updated_at=updated_at)
            events.append(conn, action=body["action"], project_id=1, body=json.dumps(body))
            if fake is not None:
                held = fake.annotations.setdefault(task_id, [])
                held[:] = [a for a in held if a["id"] != annotation_id] + [body["annotation"]]
    fold_all(services)


def first_six(updated_at: str = "2026-11-29T10:00:00Z") -> list[tuple[int, int, str, str]]:
    """Tasks 1-6 labeled by their colour (odd ids are red)."""
    return [(100 + t, t, "red" if t % 2 else "blue", updated_at) for t in range(1, 7)]
