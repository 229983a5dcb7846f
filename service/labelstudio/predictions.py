"""Label Studio's predictions endpoints, part of ``LabelStudio`` (``client.py``).

A push must cost what changed, so besides the bulk import there are the task-scoped reads and
deletes it needs; listing a whole project's predictions is kept for a push's repair path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from service.labelstudio.transport import Transport

TASK_SCOPE = 100  # tasks named per task-scoped request (their ids travel in the URL)
# Bulk writes wait this long: an import is never resent blindly, so a timeout costs a check of
# the chunk's tasks (Label Studio took over 10 s for 500 predictions on a loaded 2-core host).
WRITE_TIMEOUT = 120.0


class PredictionsAPI:
    _http: Transport

    async def list_predictions(self, project_id: int) -> list[dict[str, Any]]:
        """Every prediction of the project, of every model, in one answer: costly on a large
        project, so only a push's repair path (what it holds disagrees with Label Studio's
        counts) calls it."""
        return await self._http.api_list("GET", "/api/predictions/", params={"project": project_id})

    async def task_predictions(
        self, project_id: int, task_ids: Sequence[int], *, page_size: int = TASK_SCOPE
    ) -> dict[int, list[dict[str, Any]]]:
        """The predictions (of every model) of just these tasks, by task id; a task Label
        Studio no longer has is absent.

        The Data Manager's task list with ``selectedItems`` and ``fields=all``: one request per
        ``page_size`` tasks, whatever the project's size (``/api/predictions/`` filters by one
        task at a time).
        """
        found: dict[int, list[dict[str, Any]]] = {}
        for start in range(0, len(task_ids), page_size):
            chunk = [int(t) for t in task_ids[start : start + page_size]]
            query = {"selectedItems": {"all": False, "included": chunk}}
            params: dict[str, str | int] = {
                "project": project_id,
                "page": 1,
                "page_size": len(chunk),
                "fields": "all",
                "resolve_uri": "false",
                "query": json.dumps(query, separators=(",", ":")),
            }
            data = await self._http.api_dict("GET", "/api/tasks/", params=params)
            for task in data.get("tasks") or []:
                task_id = task.get("id") if isinstance(task, dict) else None
                if isinstance(task_id, int) and task_id in chunk:
                    found[task_id] = [
                        p for p in task.get("predictions") or [] if isinstance(p, dict)
                    ]
        return found

    async def delete_tasks_predictions(self, project_id: int, task_ids: Sequence[int]) -> int:
        """Delete EVERY model's predictions of these tasks (the Data Manager's bulk action);
        returns how many went. Idempotent, so retried like a read."""
        if not task_ids:
            return 0
        data = await self._http.api_dict(
            "POST",
            "/api/dm/actions",
            params={"id": "delete_tasks_predictions", "project": project_id},
            json={"selectedItems": {"all": False, "included": [int(t) for t in task_ids]}},
            wait_s=WRITE_TIMEOUT,
        )
        return int(data.get("processed_items", 0))

    async def delete_prediction(self, prediction_id: int) -> bool:
        """Delete one prediction; False if it was already gone."""
        return await self._http.delete(f"/api/predictions/{int(prediction_id)}/")

    async def delete_model_version(self, project_id: int, version: str) -> int:
        """Delete every prediction of the project under ``version``; returns how many."""
        data = await self._http.api(
            "DELETE", f"/api/projects/{project_id}/model-versions/", json={"model_version": version}
        )
        if isinstance(data, dict):
            return int(data.get("deleted_predictions", 0))
        return 0

    async def model_versions(self, project_id: int) -> dict[str, int]:
        """Every model_version the project's predictions carry (and the project's own), with
        how many predictions each has."""
        data = await self._http.api_dict("GET", f"/api/projects/{project_id}/model-versions/")
        return {str(k): int(v) if isinstance(v, int) else 0 for k, v in data.items()}

    async def import_predictions(
        self, project_id: int, predictions: Sequence[Mapping[str, Any]]
    ) -> int:
        """Bulk-create predictions; returns how many Label Studio created.

        Never retried here: a lost answer may hide a success, and a blind resend would create
        duplicates. The caller checks those tasks' predictions and sends what is missing.
        """
        if not predictions:
            return 0
        path = f"/api/projects/{project_id}/import/predictions"  # no trailing slash in LS
        data = await self._http.api_dict(
            "POST", path, json=[dict(p) for p in predictions], retry=False, wait_s=WRITE_TIMEOUT
        )
        return int(data.get("created", 0))
