"""The append-only event log: every accepted webhook body, verbatim, with its arrival time."""

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from storage.db import utcnow
from storage.tables import events

FOLD_LOCK = 0x6C6C_F01D  # Postgres advisory lock held by the transaction that folds a batch
# Repeating these is a new request, not a redelivery.
REPEATABLE_ACTIONS = frozenset({"START_TRAINING"})


@dataclass(frozen=True)
class Appended:
    id: int
    duplicate: bool  # an identical body was already in the log


def digest(action: str, body: str) -> str | None:
    if action in REPEATABLE_ACTIONS:
        return None
    return hashlib.sha256(body.encode()).hexdigest()


def append(
    conn: Connection,
    *,
    action: str,
    project_id: int | None,
    body: str,
    source: str = "webhook",
    received_at: datetime | None = None,
) -> Appended:
    """Store one event unless the identical body is already stored; the caller commits."""
    key = digest(action, body)
    values = {
        "action": action,
        "project_id": project_id,
        "body": body,
        "digest": key,
        "source": source,
        "received_at": received_at or utcnow(),
    }
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(events)
        .values(values)
        .on_conflict_do_nothing(index_elements=["digest"])
        .returning(events.c.id)
    )
    event_id = conn.execute(stmt).scalar()
    if event_id is not None:
        return Appended(int(event_id), duplicate=False)
    existing = conn.execute(sa.select(events.c.id).where(events.c.digest == key)).scalar_one()
    return Appended(int(existing), duplicate=True)


def append_many(
    conn: Connection, rows: Sequence[tuple[str, int | None, str]], source: str = "webhook"
) -> list[Appended]:
    """Store (action, project id, body) rows in one transaction, in order: one INSERT for all
    of them (compiled once, whatever the batch size), and one SELECT for the bodies that were
    already stored."""
    now = utcnow()
    keys = [key for action, _, body in rows if (key := digest(action, body)) is not None]
    if len(keys) != len(rows):  # repeatable actions are never deduplicated: one by one
        return [
            append(conn, action=a, project_id=p, body=b, source=source, received_at=now)
            for a, p, b in rows
        ]
    values = [
        {"action": a, "project_id": p, "body": b, "digest": k, "source": source, "received_at": now}
        for (a, p, b), k in zip(rows, keys, strict=True)
    ]
    stmt = _insert_many(conn.dialect.name)
    inserted = {str(key): int(event_id) for event_id, key in conn.execute(stmt, values)}
    stored: dict[str, int] = {}
    if missing := [key for key in keys if key not in inserted]:
        query = sa.select(events.c.id, events.c.digest).where(events.c.digest.in_(missing))
        stored = {str(key): int(event_id) for event_id, key in conn.execute(query)}
    answers, seen = [], set()
    for key in keys:
        if key in inserted and key not in seen:  # a body twice in one batch: stored once
            seen.add(key)
            answers.append(Appended(inserted[key], duplicate=False))
        else:
            answers.append(Appended(inserted.get(key) or stored[key], duplicate=True))
    return answers


@functools.cache
def _insert_many(dialect_name: str) -> sa.Insert:
    """Built once per dialect: the writer runs it for every batch of webhooks."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    stmt: sa.Insert = (
        dialect.insert(events)
        .on_conflict_do_nothing(index_elements=["digest"])
        .returning(events.c.id, events.c.digest)  # in no particular order: matched by digest
    )
    return stmt


def claim_unfolded(conn: Connection, limit: int = 500) -> list[tuple[int, str, str]]:
    """The oldest events not yet folded.

    On Postgres the caller's transaction first takes the fold lock, so replicas fold one batch
    at a time and in order (a batch is read, then written in sets: two at once would race).
    SQLite's single writer does the same there.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(_FOLD_LOCK)
    return [(r.id, r.action, r.body) for r in conn.execute(_UNFOLDED, {"limit": limit})]


def mark_folded(conn: Connection, event_ids: Sequence[int]) -> None:
    if event_ids:
        conn.execute(_MARK_FOLDED, {"ids": list(event_ids)})


# Built once (the fold runs these every batch; building one costs more than running it).
_FOLD_LOCK = sa.select(sa.func.pg_advisory_xact_lock(FOLD_LOCK))
_UNFOLDED = (
    sa.select(events.c.id, events.c.action, events.c.body)
    .where(events.c.folded == sa.false())  # "= false", not "IS false": the partial index
    .order_by(events.c.id)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_MARK_FOLDED = (
    events.update().where(events.c.id.in_(sa.bindparam("ids", expanding=True))).values(folded=True)
)


def count(conn: Connection, project_id: int) -> int:
    stmt = sa.select(sa.func.count()).where(events.c.project_id == project_id)
    return int(conn.execute(stmt).scalar_one())


def last_id(conn: Connection) -> int:
    """The newest event's id (0 for an empty log): a mark to ask later what came after it."""
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0))).scalar_one())


def since(conn: Connection, project_id: int, after_id: int) -> list[tuple[int, str, str]]:
    """(id, action, body) of the project's events after ``after_id``, oldest first."""
    stmt = (
        sa.select(events.c.id, events.c.action, events.c.body)
        .where(events.c.project_id == project_id, events.c.id > after_id)
        .order_by(events.c.id)
    )
    return [(r.id, r.action, r.body) for r in conn.execute(stmt)]
