"""The resources a running labelloop shares: opened once, passed explicitly, closed in reverse."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from sqlalchemy.engine import Engine

from service.eventlog import EventWriter
from service.labelstudio import LabelStudio
from service.metrics import Metrics
from service.settings import Settings
from storage.db import create_engine


@dataclass
class Services:
    settings: Settings
    engine: Engine
    label_studio: LabelStudio
    # Writes to SQLite go through this lock in-process, so they queue here rather than in
    # SQLite's busy-retry sleeps. The event writer and the folder take it.
    write_lock: asyncio.Lock
    event_writer: EventWriter
    metrics: Metrics
    # Set after each committed webhook: the folder wakes and folds it.
    events_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # Set whenever a job is queued: the in-process worker wakes and claims it.
    jobs_queued: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[Services]:
    """The database engine and the Label Studio client; ``transport`` fakes the network."""
    engine = create_engine(settings.database.url)
    label_studio = LabelStudio(
        settings.label_studio.url, settings.label_studio.api_key, transport=transport
    )
    write_lock = asyncio.Lock()
    try:
        yield Services(
            settings=settings,
            engine=engine,
            label_studio=label_studio,
            write_lock=write_lock,
            event_writer=EventWriter(engine, write_lock),
            metrics=Metrics(engine),
        )
    finally:
        await label_studio.aclose()
        engine.dispose()
