"""A running job's progress reaches its row while it runs, not only at heartbeats."""

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import service.jobs.worker
from service.context import Services
from service.jobs.pipeline import Outcome
from service.jobs.worker import Worker
from storage import jobs

pytestmark = pytest.mark.anyio


def row_progress(services: Services, job_id: int) -> Any:
    with services.engine.begin() as conn:
        job = jobs.get(conn, job_id)
    assert job is not None
    return job.progress


async def until(check: Callable[[], bool]) -> None:
    """Poll ``check`` (bounded by the caller's timeout)."""
    while True:
        if check():
            return
        await asyncio.sleep(0.01)


async def test_progress_is_written_while_the_job_runs_and_only_when_it_changed(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    with services.engine.begin() as conn:
        job_id, _ = jobs.enqueue(conn, 1, "manual")
    worker = Worker(services, progress_seconds=0.01)  # heartbeats stay 20 s apart
    written: list[Any] = []
    heartbeat = jobs.heartbeat

    def recorded(conn: Any, job_id: int, progress: Any = None, *, lease: int) -> bool:
        written.append(None if progress is None else dict(progress))
        return heartbeat(conn, job_id, progress, lease=lease)

    monkeypatch.setattr(service.jobs.worker.jobs, "heartbeat", recorded)
    step = asyncio.Event()

    async def train(
        project_id: int, job_id: int, kind: str, progress: dict[str, Any], **_: Any
    ) -> Outcome:
        for done in (1, 2, 3):  # the pipeline's stages update the dict, as _stage does
            progress.update(stage="embedding", done=done, total=3)
            await step.wait()
            step.clear()
        return Outcome("succeeded", model_version=None)

    monkeypatch.setattr(worker.pipeline, "train", train)
    running = asyncio.create_task(worker.run_one())
    with anyio.fail_after(30):
        for done in (1, 2, 3):
            # Poll the row, as `retrain --wait` does.
            await until(lambda d=done: (row_progress(services, job_id) or {}).get("done") == d)
            looks = worker.progress_looks  # the unchanged progress is looked at again...
            await until(lambda n=looks + 5: worker.progress_looks >= n)
            step.set()  # ...and not written again
        assert await running

    during = written[:-1]  # the last write is the finish's
    assert [p["done"] for p in during] == [1, 2, 3]  # once per change, never repeated
    assert row_progress(services, job_id) == {"stage": "embedding", "done": 3, "total": 3}
