"""The kill drill in the suite: `kill -9` mid-stream loses no acknowledged event.

A smaller run of ``bench/kill_drill.py`` (which prints the README's table): 1,500 unique events
from 32 concurrent clients to a real ``labelloop serve --no-worker`` subprocess, SIGKILL after a
third are acknowledged, restart on the same database, send the rest; then every acknowledged
event id must hold the very bytes sent, and none may be stored twice. SQLite, and Postgres when
LABELLOOP_TEST_POSTGRES_URL is set.
"""

from pathlib import Path

import pytest

from bench.kill_drill import DrillResult, audit, event_body, run_drill
from storage import events, tables
from storage.db import create_engine, utcnow

pytestmark = pytest.mark.anyio

EVENTS = 1500
CLIENTS = 32


async def test_kill_9_loses_no_acknowledged_event(database_url: str, tmp_path: Path) -> None:
    result = await run_drill(
        database_url,
        tmp_path,
        events=EVENTS,
        concurrency=CLIENTS,
        kill_delay=0.01,  # while the clients keep sending: the kill lands amid commits
        deadline=240.0,
    )

    assert result.problems == []
    assert result.acknowledged_before_kill >= EVENTS // 3
    assert result.acknowledged_before_kill < EVENTS  # the kill came mid-stream
    assert result.lost == 0
    assert result.duplicates == 0
    assert result.unacknowledged == 0
    assert result.acknowledged == result.stored == EVENTS
    assert result.ok


def test_the_audit_sees_lost_changed_and_doubled_events(sqlite_url: str) -> None:
    """The drill can fail: its audit counts an acknowledged id that is missing or holds other
    bytes as lost, and a body stored twice as a duplicate."""
    run = "audit"
    bodies = [event_body(seq, run) for seq in range(4)]
    engine = create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            ids = [
                events.append(conn, action="ANNOTATION_CREATED", project_id=1, body=b.decode()).id
                for b in bodies[:3]
            ]
            doubled = bodies[1].decode()
            conn.execute(  # the same event again, past the dedupe (as a bug would store it)
                tables.events.insert().values(
                    action="ANNOTATION_CREATED",
                    project_id=1,
                    body=doubled,
                    digest=None,
                    source="webhook",
                    received_at=utcnow(),
                )
            )
    finally:
        engine.dispose()
    acked = {0: ids[0], 1: ids[1], 2: ids[0], 3: 10_000}  # 2: wrong bytes, 3: missing
    result = DrillResult("sqlite", len(bodies), 1)

    audit(sqlite_url, run, bodies, acked, result)

    assert result.lost == 2
    assert result.duplicates == 1
    assert result.stored == 4
    assert not result.ok
