"""Label Studio's Data Manager tabs ("views"), part of ``LabelStudio`` (``client.py``).

labelloop keeps one tab per project, ``REVIEW_TAB``, whose filter selects the tasks holding the
annotations the model confidently disagrees with (the label-review queue), so reviewers find
them without leaving Label Studio. Label Studio 1.23.2: ``GET/POST /api/dm/views/?project=ID``,
``PATCH /api/dm/views/{id}/`` (always with ``data``: an update reads it); a view's
``data.filters`` becomes its filter group. The filter is on the "Annotation IDs" column
(``filter:tasks:annotations_ids``, ``contains``, a comma-separated list: Label Studio turns it
into ``annotations.id IN (...)``), one filter item however many suspects there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.labelstudio.errors import LabelStudioError
from service.labelstudio.transport import Transport

REVIEW_TAB = "labelloop: review"


def review_filters(annotation_ids: Sequence[int]) -> dict[str, Any]:
    """The Data Manager filter that selects the tasks holding these annotations (none when
    the list is empty)."""
    return {
        "conjunction": "and",
        "items": [
            {
                "filter": "filter:tasks:annotations_ids",
                "operator": "contains",
                "type": "String",
                "value": ",".join(str(int(i)) for i in annotation_ids),
            }
        ],
    }


class ViewsAPI:
    _http: Transport

    async def list_views(self, project_id: int) -> list[dict[str, Any]]:
        views = await self._http.api("GET", "/api/dm/views/", params={"project": project_id})
        if isinstance(views, dict):  # a paginated answer, should a setting ask for one
            views = views.get("results")
        if not isinstance(views, list):
            raise LabelStudioError("GET /api/dm/views/: expected a JSON list")
        mine = [v for v in views if isinstance(v, dict)]
        return [v for v in mine if v.get("project", project_id) == project_id]

    async def ensure_view(
        self, project_id: int, title: str, filters: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Create the project's tab ``title`` with ``filters``, or update the one there (what
        else its ``data`` holds, hidden columns say, is kept); returns (view, created). Extra
        tabs of the same title (a create retried after a lost answer) are deleted."""
        same = sorted(
            (v for v in await self.list_views(project_id) if _title(v) == title),
            key=lambda v: int(v["id"]),
        )
        if not same:
            data = {"title": title, "type": "list", "target": "tasks", "filters": filters}
            body = {"project": project_id, "data": data}
            return await self._http.api_dict("POST", "/api/dm/views/", json=body), True
        existing = same[0].get("data")
        data = {**(existing if isinstance(existing, dict) else {}), "title": title}
        data["filters"] = filters
        view = await self._http.api_dict(
            "PATCH", f"/api/dm/views/{same[0]['id']}/", json={"project": project_id, "data": data}
        )
        for duplicate in same[1:]:
            await self._http.delete(f"/api/dm/views/{duplicate['id']}/")
        return view, False


def _title(view: dict[str, Any]) -> Any:
    data = view.get("data")
    return data.get("title") if isinstance(data, dict) else None
