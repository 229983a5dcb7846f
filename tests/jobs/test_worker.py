"""Real `labelloop worker` processes sharing one database (SQLite and Postgres)."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.ingest.fold import fold_pending
from service.settings import Settings, TrainingSettings
from storage import events, jobs, models
from storage.tables import jobs as jobs_table
from tests import payloads
from tests.fake_labelstudio import TOKEN, FakeLabelStudio, first_six
from tests.fake_ls_server import FakeLabelStudioServer

LABELLOOP = Path(sys.executable).parent / "labelloop"


@pytest.fixture
def ls_server(fake: FakeLabelStudio) -> Iterator[FakeLabelStudioServer]:
    with FakeLabelStudioServer(fake).running() as server:
        yield server


@pytest.fixture
def start_worker(
    engine: Engine, ls_server: FakeLabelStudioServer, tmp_path: Path
) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    config = tmp_path / "settings.toml"
    url = engine.url.render_as_string(hide_password=False)
    config.write_text(
        f'[database]\nurl = "{url}"\n'
        f'[label_studio]\nurl = "{ls_server.url}"\napi_key = "{TOKEN}"\ncatch_up = ""\n'
        "[worker]\nstale_after = 3\nmax_attempts = 3\n"
        '[training]\nweights = "none"\nimage_size = 64\ndevice = "cpu"\nthreshold = 1000\n'
    )
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker{len(processes)}.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [str(LABELLOOP), "worker", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")},
        )
        log.close()
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def label_six(
    engine: Engine, fake: FakeLabelStudio, *, extra: tuple[int, int, str, str] | None = None
) -> None:
    """Six annotations in Label Studio, and their webhooks in the log (the project itself is
    learned by the worker's first job: it was never caught up); ``extra``: one more."""
    with engine.begin() as conn:
        for annotation_id, task_id, label, stamp in [*first_six(), *([extra] if extra else [])]:
            body = payloads.annotation_event(annotation_id, task_id, label, updated_at=stamp)
            fake.annotations[task_id] = [body["annotation"]]
            events.append(conn, action=body["action"], project_id=1, body=json.dumps(body))
        fold_pending(conn, Settings(training=TrainingSettings(threshold=1000)))


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while (result := check()) is None or result is False:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)
    return result


def all_jobs(engine: Engine) -> list[Any]:
    with engine.begin() as conn:
        return list(conn.execute(sa.select(jobs_table).order_by(jobs_table.c.id)))


def test_two_workers_never_run_two_jobs_of_one_project_at_once(
    engine: Engine,
    start_worker: Callable[[], subprocess.Popen[bytes]],
    ls_server: FakeLabelStudioServer,
    fake: FakeLabelStudio,
) -> None:
    label_six(engine, fake)
    ls_server.images_open.clear()  # hold the first job in its downloads
    start_worker()
    start_worker()
    with engine.begin() as conn:
        first, _ = jobs.enqueue(conn, 1, "manual")
    wait_until(lambda: status(engine, first) == "running", 60, "a worker to start job 1")
    with engine.begin() as conn:
        second, _ = jobs.enqueue(conn, 1, "manual")  # a follow-up while job 1 runs
    # The idle worker polls every 2 s; over several polls it must leave job 2 alone.
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert status(engine, second) == "queued"
        time.sleep(0.2)
    ls_server.images_open.set()
    wait_until(lambda: status(engine, second) in jobs.FINISHED, 120, "both jobs to finish")
    # (Tasks learned during the first training queue a push too: not a training.)
    done = [j for j in all_jobs(engine) if j.kind != "push"]
    assert [(j.id, j.status) for j in done] == [(first, "succeeded"), (second, "succeeded")]
    assert done[1].started_at >= done[0].finished_at


def status(engine: Engine, job_id: int) -> str | None:
    with engine.begin() as conn:
        job = jobs.get(conn, job_id)
    return None if job is None else str(job.status)


def test_a_job_whose_worker_is_killed_is_recovered_once(
    engine: Engine,
    start_worker: Callable[[], subprocess.Popen[bytes]],
    ls_server: FakeLabelStudioServer,
    fake: FakeLabelStudio,
) -> None:
    label_six(engine, fake)
    first = start_worker()
    with engine.begin() as conn:
        done, _ = jobs.enqueue(conn, 1, "manual")
    wait_until(lambda: status(engine, done) == "succeeded", 120, "version 1")

    ls_server.images_open.clear()  # the next job hangs in its downloads (the broken images)
    label_six(engine, fake, extra=(107, 7, "red", "2026-11-29T11:00:00Z"))  # a new label
    with engine.begin() as conn:
        job_id, _ = jobs.enqueue(conn, 1, "manual")
    wait_until(lambda: status(engine, job_id) == "running", 60, "the worker to start job 2")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    with engine.begin() as conn:
        assert models.active(conn, 1).version == "labelloop-v1"  # type: ignore[union-attr]
        assert [v.version for v in models.listing(conn, 1)] == ["labelloop-v1"]

    ls_server.images_open.set()
    start_worker()
    wait_until(lambda: status(engine, job_id) in jobs.FINISHED, 120, "the job recovered")
    with engine.begin() as conn:
        job = jobs.get(conn, job_id)
        assert job is not None and (job.status, job.attempts) == ("succeeded", 2)
        assert models.active(conn, 1).version == "labelloop-v2"  # type: ignore[union-attr]
