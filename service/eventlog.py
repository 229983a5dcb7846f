"""Group commit for the event log: concurrent webhooks share one transaction and one fsync.

Each webhook hands its event to the writer and waits; the writer takes everything queued, inserts
it in one transaction, commits, and only then answers each waiter with its event id (or the
database error). Acknowledged therefore still means committed, but sixteen concurrent submits
cost one disk flush instead of sixteen, and never queue on SQLite's busy-retry sleeps.
"""

import asyncio
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
    def __init__(self, engine: Engine, write_lock: asyncio.Lock) -> None:
        self._engine = engine
        self._write_lock = write_lock
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()

    async def append(self, action: str, project_id: int | None, body: str) -> events.Appended:
        """The event's id once it is committed (or found already stored); raises on failure."""
        pending = _Pending(action, project_id, body)
        await self._queue.put(pending)
        return await pending.done

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                async with self._write_lock:
                    ids = await asyncio.to_thread(self._insert, batch)
            except Exception as exc:  # every waiter learns the event was not stored
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(exc)
                continue
            for pending, event_id in zip(batch, ids, strict=True):
                if not pending.done.done():
                    pending.done.set_result(event_id)

    def _insert(self, batch: list[_Pending]) -> list[events.Appended]:
        with self._engine.begin() as conn:
            return events.append_many(conn, [(p.action, p.project_id, p.body) for p in batch])
