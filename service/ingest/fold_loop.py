"""The background loop that folds new events into the label state right after their commit.

The webhook only appends and answers; this loop does the rest off the request path. It also
folds, at start-up, whatever an earlier process acknowledged but did not fold before it died.
"""

import asyncio
import contextlib
import logging

from service.context import Services
from service.ingest.eventlog import EventWriter
from service.ingest.fold import FoldResult, fold_batch

logger = logging.getLogger(__name__)


def fold_all(services: Services) -> FoldResult:
    """Fold until no unfolded event is left (one transaction per batch)."""
    total = FoldResult()
    while (result := fold_batch(services.engine, services.settings)).events:
        total.events += result.events
        total.queued_jobs += result.queued_jobs
    return total


async def run_folder(
    services: Services,
    writer: EventWriter,
    *,
    poll_interval: float = 5.0,
    gather_delay: float = 0.05,
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
                await writer.quiet(max_wait=1.0)  # webhooks first
                async with services.write_turn():
                    result = await asyncio.to_thread(fold_batch, services.engine, services.settings)
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
