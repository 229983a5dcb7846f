"""A train job's task snapshot on a large project, before and after the task list came from the log;
then where an incremental head retrain on cached embeddings spends its time.

Runs offline against the unit tests' in-memory Label Studio (tests/fake_labelstudio.py, through
httpx.MockTransport: no network, so a real Label Studio's listing is slower still) on a fresh
SQLite database:

    .venv/bin/python bench/tasks_scale.py --tasks 10000 --labels 200

1. every task is learned once by catch-up (what ``register`` or the first sight of a project
   does, and what the periodic reconcile costs every ``catch_up``);
2. the snapshot of a train job as it was (every task listed from Label Studio, then saved) and
   as it is now (``Pipeline._snapshot``: one ``get_project``, the tasks read from the database);
3. a cold training (every image embedded), then +20 labels and an incremental retrain with its
   stages timed: snapshot, embedding lookup (``embeddings.get_many``), head training, the gate
   (``prepare_gate``), registration, and the push (prediction and import into the fake).
"""

import argparse
import asyncio
import functools
import inspect
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import service.jobs.embedding
import service.jobs.pipeline
from service.context import open_services
from service.jobs import triggers
from service.jobs.catchup import learn
from service.jobs.pipeline import Pipeline
from service.jobs.worker import Worker
from service.labelstudio.labelconfig import project_row
from service.settings import (
    DatabaseSettings,
    LabelStudioSettings,
    Settings,
    TrainingSettings,
)
from storage import embeddings, labels
from storage.migrate import upgrade
from tests.fake_labelstudio import BLUE, RED, TOKEN, FakeLabelStudio, annotate, color_image

STAMP = "2026-11-29T10:00:00Z"
timings: dict[str, list[float]] = defaultdict(list)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                timings[name].append(time.perf_counter() - start)

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings[name].append(time.perf_counter() - start)

    return run


def instrument() -> None:
    pipeline = service.jobs.pipeline
    Pipeline._snapshot = timed("snapshot", Pipeline._snapshot)  # type: ignore[method-assign]
    pipeline.train_head = timed("head training", pipeline.train_head)  # type: ignore[attr-defined]
    pipeline.prepare_gate = timed("gate (prepare_gate)", pipeline.prepare_gate)  # type: ignore[attr-defined]
    pipeline._register_leased = timed("register", pipeline._register_leased)
    pipeline.push_predictions = timed("push (predict + import)", pipeline.push_predictions)  # type: ignore[attr-defined]
    service.jobs.embedding.Embedder.embed_tasks = timed(  # type: ignore[method-assign]
        "embed_tasks (all)", service.jobs.embedding.Embedder.embed_tasks
    )
    embeddings.get_many = timed("embeddings.get_many", embeddings.get_many)  # type: ignore[assignment]


async def old_snapshot(services: Any, project_id: int) -> int:
    """What ``Pipeline._snapshot`` did before: list every task, save them all, read back."""
    project = await services.label_studio.get_project(project_id)
    seen = [
        {"id": t["id"], "data": t.get("data") or {}}
        async for t in services.label_studio.iter_tasks(project_id)
    ]

    def sync() -> int:
        with services.engine.begin() as conn:
            labels.save_project(conn, project_id, project_row(project))
            labels.save_tasks(conn, project_id, seen)
            current = {t["id"] for t in seen}
            stale = [t.id for t in labels.project_tasks(conn, project_id) if t.id not in current]
            labels.delete_tasks(conn, project_id, stale)
            tasks = labels.project_tasks(conn, project_id)
            labels.training_labels(conn, project_id)
            return len(tasks)

    return await asyncio.to_thread(sync)


async def main(n_tasks: int, n_labels: int, image_size: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="labelloop-tasks-bench-"))
    url = f"sqlite:///{folder / 'bench.db'}"
    upgrade(url)
    fake = FakeLabelStudio()
    for task_id in range(1, n_tasks + 1):  # every image its own (a cache entry each)
        fake.add_task(task_id, color_image(RED if task_id % 2 else BLUE, seed=task_id, size=16))
    settings = Settings(
        database=DatabaseSettings(url=url),
        label_studio=LabelStudioSettings(url="http://ls.test", api_key=TOKEN),
        training=TrainingSettings(
            threshold=10**6, weights="none", image_size=image_size, device="cpu"
        ),
    )
    async with open_services(settings, transport=fake.transport()) as services:
        start = time.perf_counter()
        report = await learn(services, 1)
        print(f"catch-up learning {report.tasks_new} tasks: {time.perf_counter() - start:.2f} s")
        start = time.perf_counter()
        await learn(services, 1)
        print(f"catch-up reconcile, nothing changed: {time.perf_counter() - start:.2f} s")
        labeled = [
            (100_000 + t, t, "red" if t % 2 else "blue", STAMP) for t in range(1, n_labels + 1)
        ]
        annotate(services, *labeled, fake=fake)

        for label, run in (
            ("before (list every task, save)", lambda: old_snapshot(services, 1)),
            ("after (log)", lambda: Pipeline(services)._snapshot(1, {})),
        ):
            runs = []
            for _ in range(3):
                start = time.perf_counter()
                await run()
                runs.append(time.perf_counter() - start)
            print(f"snapshot {label}: best {min(runs):.3f} s of {len(runs)}")

        worker = Worker(services)
        with services.engine.begin() as conn:
            triggers.request_training(conn, settings, 1, "manual")
        start = time.perf_counter()
        await worker.run_until_idle()
        print(f"cold training ({n_tasks} images embedded): {time.perf_counter() - start:.1f} s")

        more = [
            (200_000 + t, t, "red" if t % 2 else "blue", STAMP)
            for t in range(n_labels + 1, n_labels + 21)
        ]
        annotate(services, *more, fake=fake)
        instrument()
        with services.engine.begin() as conn:
            triggers.request_training(conn, settings, 1, "manual")
        start = time.perf_counter()
        await worker.run_until_idle()
        total = time.perf_counter() - start
        print(f"incremental retrain (+20 labels, {n_tasks} cached): {total:.2f} s")
        for name, values in timings.items():
            print(f"  {name:28s} {sum(values):7.3f} s  ({len(values)} calls)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.labels, args.image_size))
