"""The resources a running labelloop shares: opened once, passed explicitly, closed in reverse."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from sqlalchemy.engine import Engine

from service.ingest.eventlog import EventWriter
from service.ingest.writer_client import WriterProcess
from service.labelstudio.client import LabelStudio
from service.labelstudio.image_fetch import Resolve, resolve_host
from service.settings import Settings
from service.web.metrics import Metrics
from storage.db import create_engine
from storage.events import Appended


class EventLog(Protocol):
    """Where webhooks append: in-process (EventWriter) or the writer process (WriterProcess)."""

    async def append(self, action: str, project_id: int | None, body: str) -> Appended: ...

    def notify_appended(self) -> None: ...

    def down_reason(self) -> str | None:
        """Why appends fail right now, or None (for /health)."""
        ...


@dataclass
class Services:
    settings: Settings
    engine: Engine
    label_studio: LabelStudio
    # Writes to SQLite go through this lock in-process, so they queue here rather than in
    # SQLite's busy-retry sleeps. The in-process event writer and folder take it (the writer
    # process serialises its own inserts and folds).
    write_lock: asyncio.Lock
    event_writer: EventLog
    metrics: Metrics
    # Set after each event committed in-process: the in-process folder wakes and folds it.
    events_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # Set whenever a job is queued: the in-process worker wakes and claims it.
    jobs_queued: asyncio.Event = field(default_factory=asyncio.Event)

    def write_turn(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Hold this for a write transaction: the write lock on SQLite (one writer at a time),
        nothing on Postgres (its row locks do the work)."""
        sqlite = self.engine.dialect.name == "sqlite"
        return self.write_lock if sqlite else contextlib.nullcontext()


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    writer_process: bool = False,
    resolve: Resolve = resolve_host,
) -> AsyncIterator[Services]:
    """The database engine and the Label Studio client; ``transport`` fakes the network and
    ``resolve`` the name lookups of the image fetch policy.

    With ``writer_process`` webhooks are stored and folded by a child process (started and
    stopped by the caller: ``event_writer.start()``/``run()``/``stop()``); else in-process.
    """
    engine = create_engine(settings.database.url)
    label_studio = LabelStudio(
        settings.label_studio.url,
        settings.label_studio.api_key,
        transport=transport,
        image_timeout=settings.images.timeout,
        allow_private_images=settings.images.allow_private,
        resolve=resolve,
    )
    write_lock = asyncio.Lock()
    events_arrived, jobs_queued = asyncio.Event(), asyncio.Event()
    event_writer: EventLog = (
        WriterProcess(settings, on_jobs_queued=jobs_queued.set)
        if writer_process
        else EventWriter(engine, write_lock, events_arrived)
    )
    try:
        yield Services(
            settings=settings,
            engine=engine,
            label_studio=label_studio,
            write_lock=write_lock,
            event_writer=event_writer,
            metrics=Metrics(engine),
            events_arrived=events_arrived,
            jobs_queued=jobs_queued,
        )
    finally:
        await label_studio.aclose()
        engine.dispose()
