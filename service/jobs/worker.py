"""The worker: claim a queued job, run the training pipeline, record how it ended.

Runs inside ``labelloop serve`` (the default) or alone as ``labelloop worker``. While a job runs
it heart-beats into the job row, so a job left ``running`` by a dead process is requeued, and
writes its progress there once a second when it changed (``retrain --wait``, status and the
page read it). The claim's attempt number is the worker's lease: when a heartbeat finds it gone
(the job was requeued while this worker was paused), the pipeline is cancelled and nothing more
is written.
"""

import asyncio
import contextlib
import json
import logging
import time
from datetime import timedelta
from typing import Any

import torch

from service.context import Services
from service.jobs.memory import release_memory
from service.jobs.pipeline import Outcome, Pipeline
from service.labelstudio.errors import LabelStudioError
from storage import jobs

logger = logging.getLogger(__name__)

LOST = object()  # what the heartbeat returns when it found the lease gone


class Worker:
    def __init__(
        self, services: Services, *, poll_interval: float = 2.0, progress_seconds: float = 1.0
    ) -> None:
        self.services = services
        self.poll_interval = poll_interval
        self.stale_after = timedelta(seconds=services.settings.worker.stale_after)
        self.heartbeat_seconds = services.settings.worker.stale_after / 3
        # How often a changed progress is written (``retrain --wait``, status, the page).
        self.progress_seconds = progress_seconds
        self.progress_looks = 0  # how often the running job's progress was looked at
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
        lease = int(job.attempts)
        progress: dict[str, Any] = {}
        started = time.monotonic()
        work = asyncio.create_task(self._execute(job, lease, progress), name=f"job-{job.id}")
        beat = asyncio.create_task(self._heartbeat(job.id, lease, progress, work))
        outcome: Outcome | None = None
        try:
            outcome = await work
        except jobs.LeaseLost:
            pass  # found by the pipeline's own check (before it registers or pushes)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            stopping = task is not None and task.cancelling() > 0
            if stopping or not (beat.done() and beat.result() is LOST):
                raise  # this worker is stopping: the job stays running, to be requeued
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        del work  # the job's tensors are garbage from here on
        await asyncio.to_thread(release_memory)  # and their pages go back to the system
        if outcome is None:
            logger.warning(
                "job %d: lease %d lost (the job was requeued, another worker may run it); "
                "stopped, nothing recorded",
                job.id,
                lease,
            )
            return True
        if job.kind != "push" and outcome.status == "succeeded" and outcome.model_version:
            self.services.metrics.training(job.kind, time.monotonic() - started)
        if await asyncio.to_thread(self._finish, job.id, lease, outcome, progress):
            logger.info("job %d %s %s", job.id, outcome.status, outcome.error or "")
        else:
            logger.warning("job %d: lease %d lost before its end was recorded", job.id, lease)
        return True

    async def _execute(self, job: Any, lease: int, progress: dict[str, Any]) -> Outcome:
        """Run the job's pipeline; its errors become a failed outcome, but not a lost lease."""
        try:
            if job.kind == "push":
                return await self.pipeline.push(
                    job.project_id, job.model_version, progress, job_id=job.id, lease=lease
                )
            return await self.pipeline.train(
                job.project_id, job.id, job.kind, progress, lease=lease
            )
        except jobs.LeaseLost:
            raise
        except Exception as exc:
            logger.exception("job %d failed", job.id)
            if isinstance(exc, LabelStudioError):
                self.services.metrics.label_studio_error(exc)
            return Outcome("failed", error=f"{type(exc).__name__}: {exc}")

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

    def _finish(self, job_id: int, lease: int, outcome: Outcome, progress: dict[str, Any]) -> bool:
        with self.services.engine.begin() as conn:
            jobs.heartbeat(conn, job_id, progress, lease=lease)
            return jobs.finish(
                conn,
                job_id,
                outcome.status,
                lease=lease,
                error=outcome.error,
                model_version=outcome.model_version,
                note=outcome.note,
            )

    async def _heartbeat(
        self, job_id: int, lease: int, progress: dict[str, Any], work: asyncio.Task[Outcome]
    ) -> object:
        """Write the job's progress when it changed, at most once every ``progress_seconds``
        (one UPDATE, whatever the pipeline did meanwhile: no write per image), and beat at
        least every ``heartbeat_seconds`` even when nothing changed. A write that finds the
        lease gone cancels ``work`` and returns ``LOST``."""
        loop = asyncio.get_running_loop()
        written = json.dumps({})  # the progress last written, as JSON (a claim clears it)
        beat_at = loop.time()
        tick = loop.time()
        while True:
            # A fixed rate: the writes' own time does not stretch the interval.
            tick = max(tick + min(self.progress_seconds, self.heartbeat_seconds), loop.time())
            await asyncio.sleep(tick - loop.time())
            current = dict(progress)  # the pipeline's threads update it: one copy, then read
            self.progress_looks += 1
            encoded = json.dumps(current, sort_keys=True, default=str)
            if encoded == written and loop.time() - beat_at < self.heartbeat_seconds:
                continue
            try:
                held = await self._beat(job_id, lease, current)
            except Exception:
                logger.warning("heartbeat of job %d failed", job_id, exc_info=True)
                continue
            written, beat_at = encoded, loop.time()
            if not held:
                work.cancel()
                return LOST

    async def _beat(self, job_id: int, lease: int, progress: dict[str, Any]) -> bool:
        """One UPDATE of the job row (heartbeat and progress), in turn with this process's
        other writers on SQLite."""

        def beat() -> bool:
            with self.services.engine.begin() as conn:
                return jobs.heartbeat(conn, job_id, progress, lease=lease)

        async with self.services.write_turn():
            return await asyncio.to_thread(beat)
