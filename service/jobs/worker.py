"""The worker: claim a queued job, run the training pipeline, record how it ended.

Runs inside ``labelloop serve`` (the default) or alone as ``labelloop worker``. While a job runs
it heart-beats into the job row, so a job left ``running`` by a dead process is requeued.
"""

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from typing import Any

import torch

from service.context import Services
from service.jobs.pipeline import Outcome, Pipeline
from service.labelstudio.errors import LabelStudioError
from storage import jobs

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self, services: Services, *, poll_interval: float = 2.0) -> None:
        self.services = services
        self.poll_interval = poll_interval
        self.stale_after = timedelta(seconds=services.settings.worker.stale_after)
        self.heartbeat_seconds = services.settings.worker.stale_after / 3
        self.pipeline = Pipeline(services)
        # Leave a core to ingest: the webhook answers while training runs.
        torch.set_num_threads(max(1, (torch.get_num_threads() or 1) - 1))

    async def run(self) -> None:
        """Claim and run jobs forever; wake early when a job is queued in this process."""
        while True:
            try:
                ran = await self.run_one()
            except Exception:
                logger.exception("worker loop failed; retrying")
                ran = False
            if not ran:
                self.services.jobs_queued.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self.services.jobs_queued.wait()

    async def run_until_idle(self) -> int:
        """Run queued jobs until none is left; returns how many ran (tests, one-shot CLI)."""
        count = 0
        while await self.run_one():
            count += 1
        return count

    async def run_one(self) -> bool:
        job = await asyncio.to_thread(self._claim)
        if job is None:
            return False
        logger.info(
            "job %d (%s, project %d, %s) started", job.id, job.kind, job.project_id, job.reason
        )
        progress: dict[str, Any] = {}
        started = time.monotonic()
        beat = asyncio.create_task(self._heartbeat(job.id, progress))
        try:
            if job.kind == "push":
                outcome = await self.pipeline.push(job.project_id, job.model_version, progress)
            else:
                outcome = await self.pipeline.train(job.project_id, job.id, job.kind, progress)
        except Exception as exc:
            logger.exception("job %d failed", job.id)
            outcome = Outcome("failed", error=f"{type(exc).__name__}: {exc}")
            if isinstance(exc, LabelStudioError):
                self.services.metrics.label_studio_error(exc)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        if job.kind != "push" and outcome.status == "succeeded" and outcome.model_version:
            self.services.metrics.training(job.kind, time.monotonic() - started)
        await asyncio.to_thread(self._finish, job.id, outcome, progress)
        logger.info("job %d %s %s", job.id, outcome.status, outcome.error or "")
        return True

    def _claim(self) -> Any:
        with self.services.engine.begin() as conn:
            recovered = jobs.recover_stale(
                conn,
                timeout=self.stale_after,
                max_attempts=self.services.settings.worker.max_attempts,
            )
            if recovered:
                logger.warning("jobs %s were orphaned by a dead worker; recovered", recovered)
        with self.services.engine.begin() as conn:
            return jobs.claim(conn)

    def _finish(self, job_id: int, outcome: Outcome, progress: dict[str, Any]) -> None:
        with self.services.engine.begin() as conn:
            jobs.heartbeat(conn, job_id, progress)
            jobs.finish(
                conn,
                job_id,
                outcome.status,
                error=outcome.error,
                model_version=outcome.model_version,
                note=outcome.note,
            )

    async def _heartbeat(self, job_id: int, progress: dict[str, Any]) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)

            def beat() -> None:
                with self.services.engine.begin() as conn:
                    jobs.heartbeat(conn, job_id, progress)

            try:
                await asyncio.to_thread(beat)
            except Exception:
                logger.warning("heartbeat of job %d failed", job_id, exc_info=True)
