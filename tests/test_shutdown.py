"""Stopping `serve` is bounded even while a training step runs: the job is left `running`
for the next worker to requeue, and nothing is marked finished.

The training step blocks on a threading.Event that is set only at the test's end. The app
runs as `serve` runs it, under ``asyncio.run`` (which also joins the loop's executor when it
closes), on a thread of the test's, so that the test can bound the wait even if the shutdown
blocks the event loop itself.
"""

import asyncio
import json
import threading
import time
from typing import Any

import pytest
import torch

from service.app import create_app
from service.ingest.fold import fold_pending
from service.jobs import pipeline
from service.settings import DatabaseSettings, LabelStudioSettings, Settings, TrainingSettings
from storage import events, jobs
from storage.db import create_engine
from tests import payloads
from tests.fake_labelstudio import TOKEN, FakeLabelStudio, first_six

GRACE = 0.5  # the shutdown grace passed to the app under test
BOUND = 15.0  # what the test allows the whole shutdown (the default grace is 30 s)


def queue_a_training(url: str, settings: Settings, fake: FakeLabelStudio) -> None:
    """Six labels in the log and in Label Studio (so the start-up catch-up agrees)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for annotation_id, task_id, label, stamp in first_six():
                body = payloads.annotation_event(annotation_id, task_id, label, updated_at=stamp)
                events.append(conn, action=body["action"], project_id=1, body=json.dumps(body))
                fake.annotations[task_id] = [body["annotation"]]
            assert fold_pending(conn, settings).queued_jobs != []
    finally:
        engine.dispose()


def test_shutdown_is_bounded_while_a_training_step_runs(
    sqlite_url: str, fake: FakeLabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        database=DatabaseSettings(url=sqlite_url),
        label_studio=LabelStudioSettings(url="http://ls.test", api_key=TOKEN, catch_up=""),
        training=TrainingSettings(threshold=6, weights="none", image_size=64, device="cpu"),
    )
    queue_a_training(sqlite_url, settings, fake)
    entered, release = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}
    train_head = pipeline.train_head

    def blocking_step(x: torch.Tensor, y: list[str], ids: list[int], **options: Any) -> Any:
        seen["daemon"] = threading.current_thread().daemon
        entered.set()
        release.wait(timeout=120)
        return train_head(x, y, ids, **options)

    monkeypatch.setattr(pipeline, "train_head", blocking_step)

    async def serve_then_stop() -> None:
        app = create_app(settings, transport=fake.transport(), shutdown_grace=GRACE)
        async with app.router.lifespan_context(app):
            assert await asyncio.to_thread(entered.wait, 60), "the training step never started"
            seen["stopping"] = time.monotonic()

    def run() -> None:
        try:
            asyncio.run(serve_then_stop())
            seen["stopped"] = time.monotonic()
        except BaseException as exc:  # reported by the test below
            seen["error"] = exc

    server = threading.Thread(target=run, name="serve", daemon=True)
    server.start()
    try:
        server.join(timeout=60 + BOUND)
        still_running = server.is_alive()
    finally:
        release.set()
        server.join(timeout=120)
    assert "error" not in seen, seen.get("error")
    assert not still_running, "shutdown waited for the training step"
    assert seen["stopped"] - seen["stopping"] < BOUND
    # A thread of its own that the interpreter does not wait for at exit either.
    assert seen["daemon"] is True

    engine = create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            job = jobs.get(conn, 1)
    finally:
        engine.dispose()
    assert job is not None and (job.status, job.finished_at, job.error) == ("running", None, None)
