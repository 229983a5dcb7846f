"""GET /projects/{id}/suspects: the label-review queue, most suspicious first. Bearer token.

Each entry is an annotation the newest head version confidently disagrees with
(``service.vision.suspects``): ``{"task", "annotation", "label" (given), "predicted", "score"
(0..1: one minus the out-of-fold probability of the given label), "annotator" (Label Studio
user id, or null)}``. ``?limit=N`` keeps the first N.
"""

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.context import Services
from service.labelstudio.ids import as_id
from service.web.control import protected
from storage import labels
from storage import suspects as stored
from storage.db import reading

FIELDS = ("task", "annotation", "label", "predicted", "score", "annotator")


@protected
async def list_suspects(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    try:
        project_id = as_id(request.path_params["project_id"])
    except ValueError:
        return JSONResponse({"error": "no such project"}, status_code=404)
    raw = request.query_params.get("limit")
    if raw is not None and not (raw.isascii() and raw.isdigit()):
        return JSONResponse({"error": "limit must be a non-negative integer"}, status_code=400)
    limit = None if raw is None else int(raw)

    def read() -> list[dict[str, Any]] | None:
        with reading(services.engine) as conn:
            if labels.get_project(conn, project_id) is None:
                return None
            return stored.listing(conn, project_id, limit)

    found = await run_in_threadpool(read)
    if found is None:
        return JSONResponse({"error": f"project {project_id} not found"}, status_code=404)
    return JSONResponse([{k: s[k] for k in FIELDS} for s in found])
