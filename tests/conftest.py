"""Shared fixtures: a migrated database per test, on SQLite and (when available) Postgres."""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage.db import create_engine
from storage.migrate import upgrade

POSTGRES_URL = os.environ.get("LABELLOOP_TEST_POSTGRES_URL", "")
REQUIRE_SERVICES = os.environ.get("LABELLOOP_REQUIRE_SERVICES") == "1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _postgres_database() -> Iterator[str]:
    """A fresh, empty database on the test server, dropped afterwards."""
    if not POSTGRES_URL:
        if REQUIRE_SERVICES:
            pytest.fail("LABELLOOP_TEST_POSTGRES_URL is not set, and CI requires Postgres")
        pytest.skip("no Postgres (set LABELLOOP_TEST_POSTGRES_URL)")
    name = f"labelloop_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
