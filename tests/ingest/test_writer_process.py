"""The writer process: webhooks stored and folded in a child process, answered after commit.

These start the real child (`python -m service.ingest.writer_process`) on a temporary database. The
kill drill (tests/test_kill_drill.py) runs it under `labelloop serve` with a kill -9 on top.
"""

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from service.app import create_app
from service.ingest import writer_frames as frames
from service.ingest.writer_client import EventNotStored, WriterProcess
from service.settings import DatabaseSettings, Settings, TrainingSettings, WebhookSettings
from storage import events as event_log
from storage.db import WAL_SIZE_LIMIT, Checkpointer, create_engine, reading
from storage.tables import annotations, events
from tests import payloads

pytestmark = pytest.mark.anyio
WAIT = 30.0  # bound on every wait for the child


def settings_for(url: str, threshold: int = 100) -> Settings:
    return Settings(
        database=DatabaseSettings(url=url),
        webhook=WebhookSettings(secret="s"),
        training=TrainingSettings(threshold=threshold, weights="none"),
    )


def body(annotation_id: int, label: str = "red") -> str:  # a choice of the config
    return json.dumps(payloads.annotation_event(annotation_id, annotation_id, label))


class Running:
    """A WriterProcess with its run() loop, and a flag for the JOBS notice."""

    def __init__(self, settings: Settings) -> None:
        self.jobs_queued = asyncio.Event()
        self.writer = WriterProcess(settings, on_jobs_queued=self.jobs_queued.set)

    async def append(self, annotation_id: int) -> tuple[int, bool]:
        appended = await self.writer.append("ANNOTATION_CREATED", 1, body(annotation_id))
        return appended.id, appended.duplicate


@pytest.fixture
async def running(sqlite_url: str) -> AsyncIterator[Running]:
    handle = Running(settings_for(sqlite_url, threshold=2))
    await handle.writer.start()
    task = asyncio.create_task(handle.writer.run())
    try:
        yield handle
    finally:
        async with asyncio.timeout(WAIT):
            await handle.writer.stop()
            await task


def test_frames_survive_any_chunking() -> None:
    stream = b"".join(
        [
            frames.event_frame("ANNOTATION_CREATED", 7, '{"ü": "é"}'),
            frames.event_frame("START_TRAINING", None, "{}"),
            frames.frame(frames.WAKE),
            frames.stored_frame(2**40, True),
        ]
    )
    reader = frames.FrameReader()
    received = [f for i in range(len(stream)) for f in reader.feed(stream[i : i + 1])]
    assert [kind for kind, _ in received] == [
        frames.EVENT,
        frames.EVENT,
        frames.WAKE,
        frames.STORED,
    ]
    assert frames.read_event(received[0][1]) == ("ANNOTATION_CREATED", 7, '{"ü": "é"}')
    assert frames.read_event(received[1][1]) == ("START_TRAINING", None, "{}")
    assert frames.read_stored(received[3][1]) == (2**40, True)
    assert reader.pending == 0


async def test_appends_are_committed_deduplicated_and_folded(
    running: Running, sqlite_url: str
) -> None:
    first, duplicate = await running.append(1)
    assert duplicate is False
    assert await running.append(1) == (first, True)  # the same body again: stored once
    answers = await asyncio.gather(*(running.append(i) for i in range(2, 40)))
    assert len({event_id for event_id, _ in answers}) == 38  # concurrent: one id each

    engine = create_engine(sqlite_url)  # another connection sees them: committed
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 39
    # Threshold 2: folding the annotations queues a training job, and the server hears of it.
    async with asyncio.timeout(WAIT):
        await running.jobs_queued.wait()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(annotations)).scalar() >= 2
    engine.dispose()


async def test_a_killed_writer_fails_its_waiters_and_comes_back(running: Running) -> None:
    await running.append(1)
    proc = running.writer._proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)
    async with asyncio.timeout(WAIT):
        # Until it is back, appends are refused (503 at the webhook), never left hanging.
        while True:
            try:
                event_id, duplicate = await running.append(2)
                break
            except EventNotStored:
                await asyncio.sleep(0.05)  # restart pauses 0.1 s; no event marks its end
    assert running.writer._proc is not None and running.writer._proc.pid != proc.pid
    assert duplicate is False and event_id > 0


async def test_a_database_error_reaches_the_waiter_and_the_writer_stays_up(
    running: Running, sqlite_url: str
) -> None:
    await running.append(1)
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE events RENAME TO events_away"))
    with pytest.raises(EventNotStored, match="OperationalError"):
        await running.append(2)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE events_away RENAME TO events"))
    engine.dispose()
    assert (await running.append(3))[1] is False  # the same writer, stored again


async def test_stop_answers_what_was_sent_and_the_writer_exits(sqlite_url: str) -> None:
    handle = Running(settings_for(sqlite_url))
    await handle.writer.start()
    task = asyncio.create_task(handle.writer.run())
    pending = [asyncio.create_task(handle.append(i)) for i in range(50)]
    await asyncio.sleep(0)  # the appends are queued for the pipe
    proc = handle.writer._proc
    assert proc is not None
    async with asyncio.timeout(WAIT):
        await handle.writer.stop()
        await task
        answers = await asyncio.gather(*pending)
    assert all(not duplicate for _, duplicate in answers)
    assert proc.returncode == 0


def test_the_writer_ignores_sigterm_and_ends_with_its_pipe(sqlite_url: str) -> None:
    """A Ctrl-C or `kill` of the process group must not cut it off mid-batch."""
    url = sqlite_url
    command = [sys.executable, "-m", "service.ingest.writer_process"]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(frames.settings_frame(settings_for(url)))
        proc.stdin.write(frames.event_frame("ANNOTATION_CREATED", 1, body(1)))
        proc.stdin.flush()
        answer = proc.stdout.read(5 + 9)  # one STORED frame
        proc.send_signal(signal.SIGTERM)
        proc.stdin.write(frames.event_frame("ANNOTATION_CREATED", 1, body(2)))
        proc.stdin.close()  # the server's "stop"
        rest = proc.stdout.read()
        assert proc.wait(timeout=WAIT) == 0
    got = frames.FrameReader().feed(answer + rest)
    assert [kind for kind, _ in got if kind != frames.JOBS] == [frames.STORED, frames.STORED]


@pytest.fixture
def served(sqlite_url: str) -> Iterator[TestClient]:
    app = create_app(
        settings_for(sqlite_url),
        run_worker=False,
        writer_process=True,
        transport=httpx.MockTransport(lambda request: httpx.Response(404)),
    )
    with TestClient(app) as client:
        yield client


def test_the_webhook_through_the_writer_process(served: TestClient) -> None:
    headers = {"X-Labelloop-Secret": "s", "Content-Type": "application/json"}
    first = served.post("/webhook", content=body(1), headers=headers)
    again = served.post("/webhook", content=body(1), headers=headers)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    assert again.json() == {**first.json(), "duplicate": True}


def test_webhook_and_health_answer_503_while_the_writer_is_down(served: TestClient) -> None:
    writer = served.app.state.services.event_writer  # type: ignore[attr-defined]
    assert isinstance(writer, WriterProcess)
    proc, writer._proc = writer._proc, None  # as between a crash and the restart
    headers = {"X-Labelloop-Secret": "s", "Content-Type": "application/json"}
    try:
        answer = served.post("/webhook", content=body(1), headers=headers)
        health = served.get("/health")
    finally:
        writer._proc = proc
    assert answer.status_code == 503
    assert answer.json()["error"] == "database unavailable; event not stored"
    assert health.status_code == 503 and "log writer" in health.json()["reason"]
    assert served.get("/health").json() == {"status": "ok"}


def test_the_writer_engine_leaves_checkpoints_to_the_checkpointer(sqlite_url: str) -> None:
    plain, apart = create_engine(sqlite_url), create_engine(sqlite_url, checkpoint_apart=True)
    with plain.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
        assert conn.exec_driver_sql("PRAGMA journal_size_limit").scalar() == WAL_SIZE_LIMIT
    with apart.begin() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        rows = [("ANNOTATION_CREATED", 1, body(i)) for i in range(50)]
        event_log.append_many(conn, rows)
    checkpointer = Checkpointer(apart, threading.Lock(), interval=0.01)
    raw = apart.raw_connection()
    try:
        log, copied = checkpointer.checkpoint(raw.driver_connection)
    finally:
        raw.close()
    assert log > 0 and copied == log  # everything in the WAL is now in the database file
    checkpointer.start()
    checkpointer.stop()  # joins its thread (bounded)
    assert not checkpointer._thread.is_alive()
    plain.dispose()
    apart.dispose()


def test_a_long_wal_starts_over_although_commits_keep_landing(sqlite_url: str) -> None:
    """The WAL starts over only when a write begins with every frame copied. Under steady load
    a commit always lands while a checkpoint runs, so it never did and grew without end; past
    ``restart_frames`` the checkpointer copies the rest holding the writers' lock."""
    engine = create_engine(sqlite_url, checkpoint_apart=True)
    writers = threading.Lock()
    wal = Path(str(sa.make_url(sqlite_url).database) + "-wal")
    numbers = itertools.count()

    def commit(count: int = 1) -> None:
        with writers, engine.begin() as conn:
            rows = [("ANNOTATION_CREATED", 1, body(next(numbers))) for _ in range(count)]
            event_log.append_many(conn, rows)

    def restarts() -> int:
        return int.from_bytes(wal.read_bytes()[12:16], "big")  # the header's checkpoint count

    class CommitsLand(Checkpointer):
        def checkpoint(self, raw: Any) -> tuple[int, int]:
            if writers.locked():
                return super().checkpoint(raw)
            # A commit landing while a checkpoint runs is not copied by it. Made deterministic:
            # a reader's snapshot stops this checkpoint at the frames before that commit.
            with reading(engine) as reader:
                reader.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()
                commit()
                return super().checkpoint(raw)

    raw = engine.raw_connection()
    try:
        commit(20)
        before = restarts()
        CommitsLand(engine, writers, restart_frames=10_000).tick(raw.driver_connection)
        commit()
        assert restarts() == before  # what landed was not copied: no fresh start

        CommitsLand(engine, writers, restart_frames=10).tick(raw.driver_connection)
        commit()
        assert restarts() == before + 1
    finally:
        raw.close()
        engine.dispose()
