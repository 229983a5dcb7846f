"""The background loop that folds new events into the label state right after their commit.

The webhook only appends and answers; this loop does the rest off the request path. It also
folds, at start-up, whatever an earlier process acknowledged but did not fold before it died.
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from sqlalchemy.engine import Connection

from service.context import Services
from service.fold import FoldResult, fold_pending

logger = logging.getLogger(__name__)


# Events folded per transaction. The folder holds the in-process write lock meanwhile, so the
# batch bounds how long a webhook's commit can wait behind it (a few ms: it folds in sets).
FOLD_BATCH = 100


def fold_batch(services: Services) -> FoldResult:
    """Fold one batch of unfolded events in one transaction."""
    with services.engine.connect() as conn, _without_fsync(conn), conn.begin():
        return fold_pending(conn, services.settings, limit=FOLD_BATCH)


@contextlib.contextmanager
def _without_fsync(conn: Connection) -> Iterator[None]:
    """On SQLite, commit folds without an fsync of their own (synchronous=NORMAL).

    Safe: a fold and its events' `folded` flags commit together, so a fold lost to a power
    cut is folded again; and the next webhook's FULL commit syncs the whole WAL, this fold's
    frames included. The webhook's commits stay FULL: acknowledged still means on disk.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cursor = raw.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()


def fold_all(services: Services) -> FoldResult:
    """Fold until no unfolded event is left (one transaction per batch)."""
    total = FoldResult()
    while (result := fold_batch(services)).events:
        total.events += result.events
        total.queued_jobs += result.queued_jobs
    return total


async def run_folder(
    services: Services, *, poll_interval: float = 5.0, gather_delay: float = 0.05
) -> None:
    """Fold whenever an event arrives (or every ``poll_interval`` for other processes' events).

    After a wake-up it waits ``gather_delay`` so that a burst of webhooks folds as one batch
    instead of interleaving a fold transaction with every request.
    """
    while True:
        await asyncio.sleep(gather_delay)
        services.events_arrived.clear()
        try:
            while True:
                await services.event_writer.quiet(max_wait=1.0)  # webhooks first
                lock = services.write_lock if services.engine.dialect.name == "sqlite" else None
                async with lock or contextlib.nullcontext():
                    result = await asyncio.to_thread(fold_batch, services)
                if result.queued_jobs:
                    services.jobs_queued.set()
                if not result.events:
                    break
        except Exception:
            logger.exception("folding events failed; retrying")
        with contextlib.suppress(TimeoutError):
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that races with the wait ending, and shutdown then hangs.
            async with asyncio.timeout(poll_interval):
                await services.events_arrived.wait()
