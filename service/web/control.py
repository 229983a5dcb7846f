"""The control API: health, status, manual training, model versions. Bearer ``api_token``."""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.context import Services
from service.jobs import triggers
from service.jobs.catchup import learn_if_new
from service.labelstudio.ids import as_id
from service.web import status
from service.web.auth import bearer_allowed
from storage import jobs, models
from storage.db import reading

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


def protected(handler: Handler) -> Handler:
    """Refuse the request with 401 unless it carries the API token (when one is set)."""

    async def guarded(request: Request) -> Response:
        services: Services = request.app.state.services
        if not bearer_allowed(request, services.settings.server.api_token):
            return JSONResponse(
                {"error": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return guarded


async def health(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    try:
        await run_in_threadpool(_ping, services)
    except sa.exc.DBAPIError as exc:
        reason = f"database unavailable: {type(exc.orig).__name__}"
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    if down := services.event_writer.down_reason():
        return JSONResponse({"status": "unavailable", "reason": down}, status_code=503)
    return JSONResponse({"status": "ok"})


@protected
async def list_projects(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    return JSONResponse({"projects": await _read(services, status.projects_overview)})


@protected
async def get_project(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    project_id = _project_param(request)
    if unknown := await learn_if_new(services, project_id):
        return JSONResponse({"error": unknown}, status_code=404)
    body = await _read(services, status.project_status, project_id)
    if body is None:
        return _not_found(project_id)
    return JSONResponse(body)


@protected
async def train(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    project_id: int = _project_param(request)
    # First sight (never caught up): learn what Label Studio holds before training on it.
    if unknown := await learn_if_new(services, project_id):
        return JSONResponse({"error": unknown}, status_code=404)
    job_id, created = await run_in_threadpool(_request_training, services, project_id)
    services.jobs_queued.set()
    return JSONResponse(
        {"job_id": job_id, "status": "queued", "coalesced": not created}, status_code=202
    )


@protected
async def list_models(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    project_id: int = _project_param(request)
    rows = await _read(services, models.listing, project_id)
    return JSONResponse({"models": [status.version_summary(row) for row in rows]})


@protected
async def activate(request: Request) -> JSONResponse:
    """Roll back (or forward) to a stored version, then push its predictions."""
    services: Services = request.app.state.services
    project_id: int = _project_param(request)
    version: str = request.path_params["version"]
    job_id = None
    if len(version) <= 64 and version.isprintable():  # model_versions.version is VARCHAR(64)
        try:
            job_id = await run_in_threadpool(_activate, services, project_id, version)
        except models.WeightsDeleted as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
    if job_id is None:
        return JSONResponse(
            {"error": f"project {project_id} has no version {version!r}"}, status_code=404
        )
    services.jobs_queued.set()
    return JSONResponse(
        {"active": version, "push_job_id": job_id, "status": "queued"}, status_code=202
    )


def _activate(services: Services, project_id: int, version: str) -> int | None:
    with services.engine.begin() as conn:
        if not models.activate(conn, project_id, version):
            return None
        job_id, _ = jobs.enqueue(conn, project_id, "manual", kind="push", model_version=version)
        return job_id


def _project_param(request: Request) -> int:
    """The {project_id} of the path, refused with 404 when no project could have it."""
    try:
        return as_id(request.path_params["project_id"])
    except ValueError:
        raise HTTPException(404, "no such project") from None


def _ping(services: Services) -> None:
    with services.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


async def _read(services: Services, fn: Callable[..., Any], *args: Any) -> Any:
    def run() -> Any:
        with reading(services.engine) as conn:
            return fn(conn, *args)

    return await run_in_threadpool(run)


def _request_training(services: Services, project_id: int) -> tuple[int, bool]:
    with services.engine.begin() as conn:
        return triggers.request_training(conn, services.settings, project_id, "manual")


def _not_found(project_id: int) -> JSONResponse:
    return JSONResponse({"error": f"project {project_id} not found"}, status_code=404)
