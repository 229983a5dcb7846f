"""Label Studio's ML-backend protocol, so labelloop can also be added under Model → Connect model.

    GET  /health   liveness (control.health)
    POST /setup    {"project": "<id>.<created>", "schema": label_config} -> {"model_version"}
    POST /predict  {"tasks": [...], "project": ...} -> {"results": [one per task, in order]}
    POST /train    the older "Start training" call -> queues a manual retrain
    ("Start training" in 1.23 posts {"action": "START_TRAINING"} to /webhook instead.)

Predictions come from the active version (service/jobs/predictor.py). Label Studio sends the ML
backend's credentials as Basic auth: when ``server.api_token`` is set, the password must be that
token.

The model_version both answer is the project's Label Studio name (``label_studio_version``, the
one every pushed prediction carries; the active version's own name before the first push): Label
Studio then skips /predict for every task that holds a pushed prediction (it asks only for tasks
without one of the backend's model_version), and what it stores from /predict is shown to
annotators like the pushed ones. A task that gets one this way before labelloop pushes its own
holds two until the push's count check repairs it (keeping one).
"""

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.context import Services
from service.ingest import relabel
from service.jobs import triggers
from service.jobs.catchup import learn_if_new
from service.labelstudio.ids import as_id
from service.labelstudio.labelconfig import project_row
from service.web.auth import basic_or_bearer_allowed
from service.web.control import Handler
from storage import labels, models, pushed

logger = logging.getLogger(__name__)


def _protected(handler: Handler) -> Handler:
    """Refuse with 401 unless the API token comes as Bearer or as a Basic auth password."""

    async def guarded(request: Request) -> Response:
        services: Services = request.app.state.services
        if basic_or_bearer_allowed(request, services.settings.server.api_token):
            return await handler(request)
        return JSONResponse(
            {"error": "missing or wrong credentials (Basic auth password = server.api_token)"},
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="labelloop"'},
        )

    return guarded


@_protected
async def setup(request: Request) -> Response:
    services: Services = request.app.state.services
    body = await _json(request)
    project_id = _project_id(body.get("project"))
    if project_id is None:
        return JSONResponse({"error": "body needs 'project': '<id>.<created>'"}, status_code=400)
    schema = body.get("schema")
    if isinstance(schema, str) and "\x00" in schema:
        return JSONResponse({"error": "'schema' is not a label config"}, status_code=400)
    # First sight: learn what Label Studio already holds (annotated before labelloop came).
    await learn_if_new(services, project_id)
    active = await run_in_threadpool(_setup_project, services, project_id, schema)
    return JSONResponse({"model_version": active or ""})


@_protected
async def predict(request: Request) -> Response:
    body = await _json(request)
    project_id = _project_id(body.get("project"))
    tasks = body.get("tasks")
    if project_id is None or not isinstance(tasks, list):
        return JSONResponse({"error": "body needs 'project' and a 'tasks' list"}, status_code=400)
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is None:
        from service.jobs.predictor import Predictor  # torch loads on the first /predict only

        predictor = request.app.state.predictor = Predictor(request.app.state.services)
    results = await predictor.predict(project_id, [t for t in tasks if isinstance(t, dict)])
    return JSONResponse({"results": results})


@_protected
async def train(request: Request) -> Response:
    services: Services = request.app.state.services
    body = await _json(request)
    project_id = _project_id(body.get("project"))
    if project_id is None:
        return JSONResponse({"error": "body needs 'project'"}, status_code=400)
    await learn_if_new(services, project_id)  # a first training sees what was labeled before

    def enqueue() -> int:
        with services.engine.begin() as conn:
            if labels.get_project(conn, project_id) is None:
                labels.save_project(conn, project_id, {})
            return triggers.request_training(conn, services.settings, project_id, "manual")[0]

    job_id = await run_in_threadpool(enqueue)
    services.jobs_queued.set()
    return JSONResponse({"job": job_id}, status_code=201)


def _setup_project(services: Services, project_id: int, schema: Any) -> str | None:
    with services.engine.begin() as conn:
        stored = labels.get_project(conn, project_id)
        if isinstance(schema, str) and (stored is None or stored.label_config != schema):
            title = stored.title if stored is not None else ""
            relabel.save_project(
                conn, project_id, project_row({"label_config": schema, "title": title})
            )
        elif stored is None:
            labels.save_project(conn, project_id, {})
        active = models.active(conn, project_id)
        if active is None:
            return None
        return pushed.label_studio_version(conn, project_id) or str(active.version)


def _project_id(value: Any) -> int | None:
    """Label Studio names the project "<id>.<created timestamp>" in ML-backend calls."""
    if isinstance(value, str):
        value = value.split(".", 1)[0]
    try:
        return as_id(value)
    except ValueError:
        return None


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to read
        return {}
    return body if isinstance(body, dict) else {}
