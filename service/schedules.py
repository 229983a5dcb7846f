"""Scheduled retraining through APScheduler: one timer per distinct ``schedule`` setting.

Schedules are derived from settings at start, so they survive restarts without stored state.
A timer firing queues a job only for projects that changed since their last job; the job row
(not the timer) is what a worker claims, so several replicas firing at once still train once.
"""

import asyncio
import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from service import triggers
from service.context import Services
from service.settings import parse_schedule

logger = logging.getLogger(__name__)


def start_scheduler(services: Services) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone="UTC")
    settings = services.settings
    schedules = {settings.training.schedule} | {t.schedule for t in settings.projects.values()}
    for schedule in sorted(s for s in schedules if s):
        parsed = parse_schedule(schedule)
        assert parsed is not None
        kind, value = parsed
        trigger = (
            IntervalTrigger(seconds=int(value))
            if kind == "interval"
            else CronTrigger.from_crontab(str(value), timezone="UTC")
        )
        scheduler.add_job(
            _fire,
            trigger,
            args=[services, schedule],
            id=f"schedule:{schedule}",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=60,
        )
        logger.info("retraining on schedule %r", schedule)
    scheduler.start()
    return scheduler


async def _fire(services: Services, schedule: str) -> None:
    def run() -> list[int]:
        with services.engine.begin() as conn:
            return triggers.run_schedule(conn, services.settings, schedule)

    queued = await asyncio.to_thread(run)
    if queued:
        logger.info("schedule %r queued jobs %s", schedule, queued)
        services.jobs_queued.set()
