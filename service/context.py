"""The resources a running labelloop shares: opened once, passed explicitly, closed in reverse."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from sqlalchemy.engine import Engine

from service.labelstudio import LabelStudio
from service.settings import Settings
from storage.db import create_engine


@dataclass
class Services:
    settings: Settings
    engine: Engine
    label_studio: LabelStudio
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
    try:
        yield Services(settings=settings, engine=engine, label_studio=label_studio)
    finally:
        await label_studio.aclose()
        engine.dispose()
