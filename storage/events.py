"""The append-only event log: every accepted webhook body, verbatim, with its arrival time."""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage.db import for_update, utcnow
from storage.tables import events


def append(
    conn: Connection,
    *,
    action: str,
    project_id: int | None,
    body: str,
    source: str = "webhook",
    received_at: datetime | None = None,
) -> int:
    """Store one event; the caller commits before acknowledging it."""
    result = conn.execute(
        events.insert().values(
            action=action,
            project_id=project_id,
            body=body,
            source=source,
            received_at=received_at or utcnow(),
        )
    )
    (event_id,) = result.inserted_primary_key or (None,)
    assert event_id is not None
    return int(event_id)


def claim_unfolded(conn: Connection, limit: int = 500) -> list[tuple[int, str, str]]:
    """The oldest events not yet folded, locked against other folders on Postgres."""
    stmt = (
        sa.select(events.c.id, events.c.action, events.c.body)
        .where(events.c.folded.is_(False))
        .order_by(events.c.id)
        .limit(limit)
    )
    return [
        (r.id, r.action, r.body) for r in conn.execute(for_update(conn, stmt, skip_locked=True))
    ]


def mark_folded(conn: Connection, event_ids: Sequence[int]) -> None:
    if event_ids:
        conn.execute(events.update().where(events.c.id.in_(event_ids)).values(folded=True))


def count(conn: Connection, project_id: int) -> int:
    stmt = sa.select(sa.func.count()).where(events.c.project_id == project_id)
    return int(conn.execute(stmt).scalar_one())
