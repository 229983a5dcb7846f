"""A worker owns its job only while it holds the lease the claim gave it (the attempt number).

The scenario: worker A's heartbeats stop landing (a VM pause, a failover) for longer than
``stale_after``; the job is requeued and worker B claims it. When A wakes up it must write
nothing: no finish over B's row (which would free the project's one running slot), no version,
no push, and no heartbeat that keeps B's row looking alive. The takeover is performed inside
A's pipeline by the fake Label Studio, at A's first image download, so the interleaving is
exact; no test here sleeps to make it happen.
"""

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import anyio
import httpx
import pytest
from sqlalchemy.engine import Engine

from service.context import Services, open_services
from service.jobs.catchup import learn
from service.jobs.worker import Worker
from service.settings import (
    DatabaseSettings,
    LabelStudioSettings,
    Settings,
    TrainingSettings,
    WorkerSettings,
)
from storage import jobs, models
from storage.db import utcnow
from tests.conftest import DEVICE
from tests.fake_labelstudio import TOKEN, FakeLabelStudio, annotate, first_six

pytestmark = pytest.mark.anyio

Hook = Callable[[httpx.Request], Awaitable[None]]


class HookedTransport(httpx.AsyncBaseTransport):
    """The fake Label Studio, with a hook that runs before each request is answered."""

    def __init__(self, fake: FakeLabelStudio) -> None:
        self.fake = fake
        self.hook: Hook | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        if self.hook is not None:
            await self.hook(request)
        return self.fake.handle(request)


@pytest.fixture
def transport(fake: FakeLabelStudio) -> HookedTransport:
    return HookedTransport(fake)


@pytest.fixture
async def services(engine: Engine, transport: HookedTransport) -> AsyncIterator[Services]:
    settings = Settings(
        database=DatabaseSettings(url=engine.url.render_as_string(hide_password=False)),
        label_studio=LabelStudioSettings(url="http://ls.test", api_key=TOKEN),
        worker=WorkerSettings(stale_after=60),
        training=TrainingSettings(threshold=6, weights="none", image_size=64, device=DEVICE),
    )
    async with open_services(settings, transport=transport) as services:
        await learn(services, 1)  # registered: jobs read the tasks from the log
        yield services


def take_over(engine: Engine) -> int:
    """What the rest of the world does while worker A is paused: the job is found stale and
    requeued, worker B claims it, and a follow-up is queued. Returns B's lease."""
    with engine.begin() as conn:
        later = utcnow() + timedelta(minutes=5)
        assert jobs.recover_stale(conn, timeout=timedelta(seconds=60), now=later) != []
    deadline = time.monotonic() + 10
    while True:  # on Postgres a claim skips a row that A's heartbeat is updating this instant
        with engine.begin() as conn:
            b = jobs.claim(conn)
        if b is not None or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert b is not None and b.attempts == 2
    with engine.begin() as conn:
        jobs.enqueue(conn, 1, "manual")  # the project's next job, queued behind B
    return int(b.attempts)


def at_first_download(action: Callable[[], Awaitable[None]]) -> Hook:
    done = False

    async def hook(request: httpx.Request) -> None:
        nonlocal done
        if request.url.path.startswith("/data/upload/") and not done:
            done = True
            await action()

    return hook


async def test_a_worker_that_lost_its_lease_finishes_nothing_and_registers_nothing(
    services: Services, fake: FakeLabelStudio, transport: HookedTransport
) -> None:
    annotate(services, *first_six())  # six labels: the threshold queues job 1

    async def takeover() -> None:
        take_over(services.engine)

    transport.hook = at_first_download(takeover)
    with anyio.fail_after(60):
        assert await Worker(services).run_one()  # worker A: claims, is taken over, wakes up

    with services.engine.begin() as conn:
        row = jobs.get(conn, 1)
        assert row is not None
        # The row is still B's: running, its attempt, nothing finished or recorded by A.
        assert (row.status, row.attempts, row.finished_at) == ("running", 2, None)
        assert row.model_version is None and row.error is None
        assert models.listing(conn, 1) == []  # A registered no version
        # B's slot is still taken: the follow-up waits.
        assert jobs.claim(conn) is None
    assert fake.predictions == [] and fake.model_version == ""


async def test_a_worker_whose_heartbeat_finds_the_lease_gone_cancels_its_pipeline(
    services: Services, fake: FakeLabelStudio, transport: HookedTransport
) -> None:
    """A's download never answers; only its own heartbeat, finding the lease gone, ends it."""
    annotate(services, *first_six())
    never = anyio.Event()

    async def takeover_then_hang() -> None:
        take_over(services.engine)
        await never.wait()

    transport.hook = at_first_download(takeover_then_hang)
    worker = Worker(services)
    worker.heartbeat_seconds = 0.05
    with anyio.fail_after(30):
        assert await worker.run_one()

    with services.engine.begin() as conn:
        row = jobs.get(conn, 1)
        assert row is not None and (row.status, row.attempts) == ("running", 2)
        assert row.finished_at is None and row.progress is None  # B has reported nothing yet
        assert models.listing(conn, 1) == []
        assert jobs.claim(conn) is None
    assert fake.predictions == []


def test_heartbeat_and_finish_of_a_lost_lease_change_nothing(engine: Engine) -> None:
    """Storage level, on both databases: only (job id, lease, running) is written."""
    with engine.begin() as conn:
        job_id, _ = jobs.enqueue(conn, 1, "manual")
        a = jobs.claim(conn)
        assert a is not None and a.attempts == 1
        assert jobs.heartbeat(conn, job_id, {"stage": "embedding"}, lease=1)
    b_lease = take_over(engine)
    with engine.begin() as conn:
        b = jobs.get(conn, job_id)
        assert b is not None
        # A's heartbeat neither refreshes B's row nor writes A's progress into it.
        assert not jobs.heartbeat(conn, job_id, {"stage": "A's"}, lease=1)
        assert not jobs.finish(conn, job_id, "succeeded", lease=1, model_version="labelloop-v9")
        with pytest.raises(jobs.LeaseLost):
            jobs.check_lease(conn, job_id, 1)
        jobs.check_lease(conn, job_id, b_lease)
        after = jobs.get(conn, job_id)
        assert after == b
        assert jobs.claim(conn) is None  # the follow-up still waits behind B
    # B itself stops responding: A's heartbeats must not have kept it looking alive.
    with engine.begin() as conn:
        later = utcnow() + timedelta(minutes=5)
        assert jobs.recover_stale(conn, timeout=timedelta(seconds=60), now=later) == [job_id]
        requeued_or_failed = jobs.get(conn, job_id)
        assert requeued_or_failed is not None and requeued_or_failed.status != "running"
        # A finished row stays finished: a stale lease cannot finish it again either.
        assert not jobs.finish(conn, job_id, "succeeded", lease=b_lease)


def test_finish_and_heartbeat_with_the_lease_write(engine: Engine) -> None:
    with engine.begin() as conn:
        job_id, _ = jobs.enqueue(conn, 1, "manual")
        job = jobs.claim(conn)
        assert job is not None
        assert jobs.heartbeat(conn, job_id, {"stage": "training"}, lease=job.attempts)
        assert jobs.finish(conn, job_id, "succeeded", lease=job.attempts, model_version="v")
        row = jobs.get(conn, job_id)
        assert row is not None and (row.status, row.model_version) == ("succeeded", "v")
        assert row.progress == {"stage": "training"}
