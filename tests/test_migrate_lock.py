"""Replicas that start together upgrade one Postgres database one after the other.

Two `upgrade` processes (as two replicas starting); the interleaving is forced: the first is
held right after its first CREATE TABLE (inside its transaction), the second is started and
runs until it waits on a lock, and only then is the first let go. Without a lock the second
waits on the first's uncommitted catalog rows and then fails on a duplicate; with the
advisory lock it waits for the whole first upgrade and finds the schema at head. (Processes,
not threads: Alembic's ``context`` is one per process.)
"""

import select
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from storage.migrate import alembic_config
from storage.tables import metadata
from tests.conftest import _postgres_database

pytestmark = pytest.mark.postgres

# An upgrade that, with "hold", stops after its first CREATE TABLE: it says "held" and waits
# for a line on stdin.
UPGRADE = """
import sys
import sqlalchemy as sa
from storage.migrate import upgrade

def hold(conn, cursor, statement, *args):
    if statement.lstrip().upper().startswith("CREATE TABLE") and not hold.done:
        hold.done = True
        print("held", flush=True)
        sys.stdin.readline()

hold.done = False
if sys.argv[2] == "hold":
    sa.event.listen(sa.engine.Engine, "after_cursor_execute", hold)
upgrade(sys.argv[1])
"""


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_database()


def waiting_on_a_lock(url: str) -> int:
    """Sessions of this database waiting on a lock (advisory, or another's catalog rows)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return int(conn.execute(query).scalar() or 0)
    finally:
        engine.dispose()


def start(url: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", UPGRADE, url, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_upgrades_started_together_both_succeed(postgres_url: str) -> None:
    first = start(postgres_url, "hold")
    second: subprocess.Popen[str] | None = None
    try:
        assert first.stdout is not None and first.stdin is not None
        ready, _, _ = select.select([first.stdout], [], [], 60)
        assert ready and first.stdout.readline().strip() == "held", "the first never held"
        second = start(postgres_url, "go")
        deadline = time.monotonic() + 60
        while second.poll() is None and waiting_on_a_lock(postgres_url) == 0:
            assert time.monotonic() < deadline, "the second upgrade neither waited nor ended"
            time.sleep(0.05)
        first.stdin.write("go\n")
        first.stdin.flush()
        outcomes = [p.communicate(timeout=120) for p in (first, second)]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    assert [first.returncode, second.returncode] == [0, 0], [err for _, err in outcomes]

    head = ScriptDirectory.from_config(alembic_config(postgres_url)).get_current_head()
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            versions = list(conn.execute(sa.text("SELECT version_num FROM alembic_version")))
        assert [v for (v,) in versions] == [head]
        assert set(metadata.tables) <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
