"""Shared fixtures: a migrated database per test, on SQLite and (when available) Postgres."""

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from bench.kill_drill import fresh_postgres
from service.context import Services, open_services
from service.jobs.catchup import learn
from service.settings import DatabaseSettings, LabelStudioSettings, Settings, TrainingSettings
from storage.db import create_engine
from storage.migrate import upgrade
from tests.fake_labelstudio import BLUE, RED, TOKEN, FakeLabelStudio, color_image

POSTGRES_URL = os.environ.get("LABELLOOP_TEST_POSTGRES_URL", "")
REQUIRE_SERVICES = os.environ.get("LABELLOOP_REQUIRE_SERVICES") == "1"
# Where the pipeline tests train and predict: "cpu" everywhere by default; "cuda" runs the same
# tests through the GPU path on a machine that has one (the README says how).
DEVICE = os.environ.get("LABELLOOP_TEST_DEVICE", "cpu")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _postgres_database() -> Iterator[str]:
    """A fresh, empty database on the test server, dropped afterwards."""
    if not POSTGRES_URL:
        if REQUIRE_SERVICES:
            pytest.fail("LABELLOOP_TEST_POSTGRES_URL is not set, and CI requires Postgres")
        pytest.skip("no Postgres (set LABELLOOP_TEST_POSTGRES_URL)")
    with fresh_postgres(POSTGRES_URL, prefix="labelloop") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database URL (not yet migrated), one of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'labelloop.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'labelloop.db'}"
    upgrade(url)
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A database migrated to head by the real Alembic migrations."""
    upgrade(database_url)
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def fake() -> FakeLabelStudio:
    """Tasks 1-10 with red (odd) or blue (even) images, 11 whose image is missing (404) and
    12 whose "image" is text."""
    fake = FakeLabelStudio()
    for task_id in range(1, 11):
        fake.add_task(task_id, color_image(RED if task_id % 2 else BLUE, seed=task_id))
    fake.add_task(11, None)
    fake.add_task(12, b"this is not an image")
    return fake


@pytest.fixture
async def unregistered(engine: Engine, fake: FakeLabelStudio) -> AsyncIterator[Services]:
    """Everything a worker needs, on the test database and the fake Label Studio; labelloop
    has not heard of the project yet."""
    settings = Settings(
        database=DatabaseSettings(url=engine.url.render_as_string(hide_password=False)),
        label_studio=LabelStudioSettings(url="http://ls.test", api_key=TOKEN),
        training=TrainingSettings(threshold=6, weights="none", image_size=64, device=DEVICE),
    )
    async with open_services(settings, transport=fake.transport()) as services:
        yield services


@pytest.fixture
async def services(unregistered: Services, fake: FakeLabelStudio) -> Services:
    """``unregistered``, after ``labelloop register``: the project's tasks are learned (jobs read
    them from the log), and the annotations the test posts arrive as webhooks."""
    await learn(unregistered, fake.project_id)
    return unregistered
