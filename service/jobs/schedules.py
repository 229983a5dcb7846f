"""Scheduled retraining through APScheduler: one timer per distinct ``schedule`` setting.

Schedules are derived from settings at start, so they survive restarts without stored state.
A timer firing queues a job only for projects that changed since their last job; the job row
(not the timer) is what a worker claims, so several replicas firing at once still train once.
"""

import asyncio
import logging
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from service.context import Services
from service.jobs import triggers
from service.jobs.catchup import catch_up_all, catch_up_new
from service.settings import parse_schedule

logger = logging.getLogger(__name__)

NEW_PROJECTS_EVERY = "15s"  # how often projects never caught up are looked for


def start_scheduler(services: Services) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone="UTC")
    settings = services.settings
    schedules = {settings.training.schedule} | {t.schedule for t in settings.projects.values()}
    for schedule in sorted(s for s in schedules if s):
        _add(scheduler, f"schedule:{schedule}", schedule, _fire, services, schedule)
        logger.info("retraining on schedule %r", schedule)
    if settings.label_studio.catch_up:
        _add(scheduler, "catch-up", settings.label_studio.catch_up, catch_up_all, services)
    # A project first seen through a webhook is learned whole soon, not at the next catch-up.
    _add(scheduler, "catch-up-new", NEW_PROJECTS_EVERY, catch_up_new, services)
    scheduler.start()
    return scheduler


def _add(scheduler: AsyncIOScheduler, job_id: str, schedule: str, fn: Any, *args: Any) -> None:
    parsed = parse_schedule(schedule)
    assert parsed is not None, "settings validated the schedule"
    kind, value = parsed
    trigger = (
        IntervalTrigger(seconds=int(value))
        if kind == "interval"
        else CronTrigger.from_crontab(str(value), timezone="UTC")
    )
    scheduler.add_job(
        fn,
        trigger,
        args=list(args),
        id=job_id,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=60,
    )


async def _fire(services: Services, schedule: str) -> None:
    def run() -> list[int]:
        with services.engine.begin() as conn:
            return triggers.run_schedule(conn, services.settings, schedule)

    queued = await asyncio.to_thread(run)
    if queued:
        logger.info("schedule %r queued jobs %s", schedule, queued)
        services.jobs_queued.set()
