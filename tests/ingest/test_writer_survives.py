"""The writer outlives the database going away under it, and stores what comes afterwards.

It used to close its fold thread pool on the first database error (to drop a possibly broken
connection), so the next fold raised "cannot schedule new futures after shutdown" and the process
died; webhooks then got 503 until it was restarted, and Label Studio never resends them.
"""

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import storage.db
from service.ingest import writer_frames as frames
from service.ingest.writer_client import EventNotStored
from service.ingest.writer_process import Writer
from storage.db import create_engine
from storage.migrate import upgrade
from storage.tables import annotations, events
from tests.ingest.test_writer_process import WAIT, Running, body, settings_for

pytestmark = pytest.mark.anyio


def count(engine: Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def event(annotation_id: int) -> tuple[bytes, bytes]:
    """An EVENT frame as the writer's reader hands it on: (kind, payload)."""
    [received] = frames.FrameReader().feed(
        frames.event_frame("ANNOTATION_CREATED", 1, body(annotation_id))
    )
    return received


async def until(check: Callable[[], bool]) -> None:
    """Poll ``check`` (the caller bounds the wait): nothing signals a fold across processes."""
    while True:
        if check():
            return
        await asyncio.sleep(0.02)


def read_answers(fd: int, n: int) -> list[bytes]:
    """The kinds of the next ``n`` STORED/FAILED answers on ``fd`` (JOBS notices skipped)."""
    reader, kinds = frames.FrameReader(), []
    deadline = time.monotonic() + WAIT
    while len(kinds) < n:
        assert time.monotonic() < deadline
        kinds += [kind for kind, _ in reader.feed(os.read(fd, 1 << 16)) if kind != frames.JOBS]
    return kinds


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past SQLite's busy timeout in 0.2 s, not 30."""
    monkeypatch.setattr(storage.db, "SQLITE_BUSY_TIMEOUT_MS", 200)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


def test_sqlite_locked_past_the_busy_timeout_then_released(
    sqlite_url: str, short_busy_timeout: None, pipe: tuple[int, int]
) -> None:
    """Another connection holds an exclusive lock: the event is refused (503), never
    acknowledged; once the lock is gone the same writer stores and folds what comes next."""
    read_fd, write_fd = pipe
    engine = create_engine(sqlite_url, checkpoint_apart=True)
    writer = Writer(engine, settings_for(sqlite_url), write_fd)
    blocker = sqlite3.connect(str(sa.make_url(sqlite_url).database), isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        writer.handle([event(1)])
        assert read_answers(read_fd, 1) == [frames.FAILED]
        writer.fold_if_due(time.monotonic())  # a fold is due (start-up): it fails, locked
        blocker.execute("ROLLBACK")

        writer.handle([event(2), event(3)])
        assert read_answers(read_fd, 2) == [frames.STORED, frames.STORED]
        deadline = time.monotonic() + WAIT
        while count(engine, annotations) < 2:  # the failed fold is retried, then this one
            assert time.monotonic() < deadline, "the writer never folded again"
            writer.fold_if_due(time.monotonic())
            time.sleep(0.01)
        assert count(engine, events) == 2  # the refused event was not stored
    finally:
        blocker.close()
        writer.close()
        engine.dispose()


def _kill_database(url: str) -> None:
    """What the writer sees when its database goes away under it."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(sa.text("ALTER TABLE events RENAME TO events_away"))
        else:  # a failover, as the client sees it: every backend of this database is gone
            terminated = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
            assert terminated >= 1  # the writer's own connections were among them
    engine.dispose()


def _revive_database(url: str) -> None:
    if sa.make_url(url).get_backend_name() == "sqlite":
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE events_away RENAME TO events"))
        engine.dispose()


async def test_the_writer_process_survives_the_database_going_away(database_url: str) -> None:
    upgrade(database_url)
    handle = Running(settings_for(database_url))
    await handle.writer.start()
    task = asyncio.create_task(handle.writer.run())
    engine = create_engine(database_url)
    try:
        async with asyncio.timeout(WAIT):
            await handle.append(1)
            await until(lambda: count(engine, annotations) == 1)  # folded: its connection open
            proc = handle.writer._proc
            assert proc is not None
            _kill_database(database_url)
            if engine.dialect.name == "sqlite":  # no table: the event cannot be stored
                with pytest.raises(EventNotStored, match="OperationalError"):
                    await handle.append(2)
                _revive_database(database_url)
            # Postgres: the writer reconnects, and the very next event is stored.
            stored = [await handle.append(i) for i in range(3, 8)]
            assert all(not duplicate for _, duplicate in stored)
            await until(lambda: count(engine, annotations) == 6)  # folded by the same writer
            assert handle.writer._proc is proc and proc.poll() is None
            assert count(engine, events) == 6
    finally:
        engine.dispose()
        async with asyncio.timeout(WAIT):
            await handle.writer.stop()
            await task
