"""create_app(settings): the routes, and a lifespan that owns every resource.

The lifespan opens the database engine and the Label Studio client, starts the event writer and
the folder (events -> labels; in this process, or both in the writer process), the scheduler
and, unless disabled, the in-process worker; it stops them in reverse.
"""

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.context import open_services
from service.ingest.eventlog import EventWriter
from service.ingest.fold_loop import run_folder
from service.ingest.webhooks import webhook
from service.ingest.writer_client import WriterProcess
from service.jobs.catchup import catch_up_all
from service.jobs.schedules import start_scheduler
from service.logs import RequestIdMiddleware
from service.settings import Settings
from service.web import control, mlbackend, page, suspects
from service.web.metrics import metrics_endpoint

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE = 30.0  # seconds that in-flight tasks, then their database work, get to finish


def create_app(
    settings: Settings,
    *,
    run_worker: bool = True,
    writer_process: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    shutdown_grace: float = SHUTDOWN_GRACE,
) -> Starlette:
    """``writer_process``: store and fold webhooks in a child process (what `labelloop serve`
    does: the server's interpreter then only parses and answers); else in this process.
    ``transport`` replaces the network under the Label Studio client (tests).
    ``shutdown_grace``: how long stopping waits for the tasks, then for their threads."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _warn_if_open(settings)
        async with open_services(
            settings, transport=transport, writer_process=writer_process
        ) as services:
            app.state.services = services
            writer = services.event_writer
            if isinstance(writer, WriterProcess):
                await writer.start()  # before the first webhook; it folds what is left
                tasks: list[asyncio.Task[Any]] = [
                    asyncio.create_task(writer.run(), name="writer-process")
                ]
            else:
                assert isinstance(writer, EventWriter)
                tasks = [
                    asyncio.create_task(writer.run(), name="event-writer"),
                    asyncio.create_task(run_folder(services, writer), name="folder"),
                ]
            # What webhooks missed while labelloop was down; in the background, so the
            # webhook answers from the first second.
            tasks.append(asyncio.create_task(catch_up_all(services), name="catch-up"))
            if run_worker:
                from service.jobs.worker import Worker  # torch loads here, never on the ingest path

                app.state.worker = Worker(services)
                tasks.append(asyncio.create_task(app.state.worker.run(), name="worker"))
            scheduler = start_scheduler(services)
            # Everything loaded so far lives as long as the server: a full collection need not
            # walk it again (it did, 40 ms at a time, in the middle of webhooks).
            gc.freeze()
            try:
                yield
            finally:
                scheduler.shutdown(wait=False)
                if isinstance(writer, WriterProcess):
                    await writer.stop()  # it answers what it took, then exits
                for task in tasks:
                    task.cancel()
                # Bounded: a task that swallowed its cancellation must not hang the shutdown.
                await asyncio.wait(tasks, timeout=shutdown_grace)
                await _drain_threads(shutdown_grace)

    routes = [
        Route("/", page.status_page, methods=["GET"]),
        Route("/login", page.login, methods=["POST"]),
        Route("/logout", page.logout, methods=["POST"]),
        Route("/webhook", webhook, methods=["POST"]),
        Route("/health", control.health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),  # open unless metrics_token
        Route("/projects", control.list_projects, methods=["GET"]),
        Route("/projects/{project_id:int}", control.get_project, methods=["GET"]),
        Route("/projects/{project_id:int}/train", control.train, methods=["POST"]),
        Route("/projects/{project_id:int}/models", control.list_models, methods=["GET"]),
        Route("/projects/{project_id:int}/suspects", suspects.list_suspects, methods=["GET"]),
        Route(
            "/projects/{project_id:int}/models/{version}/activate",
            control.activate,
            methods=["POST"],
        ),
    ]
    routes += [  # Label Studio's ML-backend protocol (GET /health is shared)
        Route("/setup", mlbackend.setup, methods=["POST"]),
        Route("/predict", mlbackend.predict, methods=["POST"]),
        Route("/train", mlbackend.train, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers={HTTPException: _http_error, sa.exc.DBAPIError: _database_error},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown routes and wrong methods answer JSON like every other error of the API."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _database_error(request: Request, exc: Exception) -> Response:
    """A database error in a handler: a value no column can hold is the request's fault (400);
    anything else means the database is unavailable (503). JSON either way, and logged."""
    assert isinstance(exc, sa.exc.DBAPIError)
    logger.error("%s %s: database error: %s", request.method, request.url.path, exc.orig)
    if isinstance(exc, sa.exc.DataError):
        return JSONResponse({"error": "a value in the request cannot be stored"}, status_code=400)
    return JSONResponse({"error": "database unavailable"}, status_code=503)


def _warn_if_open(settings: Settings) -> None:
    if not settings.server.api_token:
        logger.warning(
            "server.api_token is empty: the control API is open to anyone who can reach it"
        )
    if not settings.webhook.secret:
        logger.warning("webhook.secret is empty: anyone who can reach /webhook can post events")


async def _drain_threads(grace: float) -> None:
    """Cancelling a task does not stop the thread it was waiting on (a fold, a heartbeat, a
    chunk of embeddings). Let those finish, bounded, before the engine is disposed, so that no
    database connection outlives its pool. Training steps run on daemon threads instead
    (``service.jobs.threads``): nothing waits for them, and their job stays ``running``, to be
    requeued by the next worker."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await loop.shutdown_default_executor()
