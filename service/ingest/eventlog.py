"""Group commit for the event log: concurrent webhooks share one transaction and one fsync.

Each webhook hands its event to the writer and waits; the writer takes everything queued, inserts
it in one transaction, commits, and only then answers each waiter with its event id (or the
database error). Acknowledged therefore still means committed, but sixteen concurrent submits
cost one disk flush instead of sixteen, and never queue on SQLite's busy-retry sleeps.
"""

import asyncio
import contextlib
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from storage import events

MAX_BATCH = 256


@dataclass
class _Pending:
    action: str
    project_id: int | None
    body: str
    done: asyncio.Future[events.Appended] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class EventWriter:
    """In the server's own process (tests, embedding); `labelloop serve` uses the writer
    process instead (service/writer_client.py). Sets ``events_arrived`` for the folder."""

    def __init__(
        self, engine: Engine, write_lock: asyncio.Lock, events_arrived: asyncio.Event
    ) -> None:
        self._engine = engine
        self._write_lock = write_lock
        self._events_arrived = events_arrived
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._idle = asyncio.Event()  # set while no webhook waits for its commit
        self._idle.set()

    async def quiet(self, max_wait: float) -> None:
        """Return once no webhook waits for its commit, or after ``max_wait`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait):
                await self._idle.wait()

    async def append(self, action: str, project_id: int | None, body: str) -> events.Appended:
        """The event's id once it is committed (or found already stored); raises on failure."""
        pending = _Pending(action, project_id, body)
        self._idle.clear()
        await self._queue.put(pending)
        appended = await pending.done
        if not appended.duplicate:
            self._events_arrived.set()
        return appended

    def notify_appended(self) -> None:
        """Events were appended outside this writer (catch-up): wake the folder."""
        self._events_arrived.set()

    def down_reason(self) -> str | None:
        return None  # it shares the server's fate; the database is checked apart

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if not await self._commit(batch) and len(batch) > 1:
                # One event the database refuses must not fail its neighbours: store them one
                # transaction each, so exactly the bad one is answered with the error.
                for pending in batch:
                    await self._commit([pending])
            if self._queue.empty():
                self._idle.set()

    async def _commit(self, batch: list[_Pending]) -> bool:
        """Insert ``batch`` in one transaction and answer its waiters; False if it failed
        (the waiters of a one-event batch then get the error)."""
        try:
            async with self._write_lock:
                stored = await asyncio.to_thread(self._insert, batch)
        except Exception as exc:
            if len(batch) == 1 and not batch[0].done.done():
                batch[0].done.set_exception(exc)
            return False
        for pending, appended in zip(batch, stored, strict=True):
            if not pending.done.done():
                pending.done.set_result(appended)
        return True

    def _insert(self, batch: list[_Pending]) -> list[events.Appended]:
        with self._engine.begin() as conn:
            return events.append_many(conn, [(p.action, p.project_id, p.body) for p in batch])
