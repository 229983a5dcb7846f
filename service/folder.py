"""The background loop that folds new events into the label state right after their commit.

The webhook only appends and answers; this loop does the rest off the request path. It also
folds, at start-up, whatever an earlier process acknowledged but did not fold before it died.
"""

import asyncio
import contextlib
import logging

from service.context import Services
from service.fold import FoldResult, fold_pending

logger = logging.getLogger(__name__)


def fold_all(services: Services) -> FoldResult:
    """Fold until no unfolded event is left (one transaction per batch)."""
    total = FoldResult()
    while True:
        with services.engine.begin() as conn:
            result = fold_pending(conn, services.settings)
        total.events += result.events
        total.projects |= result.projects
        total.queued_jobs += result.queued_jobs
        if result.events == 0:
            return total


async def run_folder(services: Services, *, poll_interval: float = 5.0) -> None:
    """Fold whenever an event arrives (or every ``poll_interval`` for other processes' events)."""
    while True:
        services.events_arrived.clear()
        try:
            result = await asyncio.to_thread(fold_all, services)
        except Exception:
            logger.exception("folding events failed; retrying")
            result = FoldResult()
        if result.queued_jobs:
            services.jobs_queued.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(services.events_arrived.wait(), poll_interval)
