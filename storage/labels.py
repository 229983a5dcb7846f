"""The label state folded from the event log: projects, tasks and their current annotations.

The rules of folding (newer ``updated_at`` wins, deletions leave tombstones, ``changes``
counts only changes to training data) live in service/fold.py; this module reads and writes the
rows, in sets, as the fold decides.
"""

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from storage.db import upsert, utcnow
from storage.tables import annotations, projects, tasks

# What the fold writes for an annotation (tombstones keep the row, with ``deleted`` set).
ANNOTATION_COLUMNS = (
    "task_id",
    "project_id",
    "label",
    "was_cancelled",
    "deleted",
    "updated_at",
    "result",
    "annotator",
)

# The fold's statements are built once: building one costs ~0.12 ms of Python on this machine,
# more than running it, and a fold runs about ten.
_PROJECT = sa.select(projects).where(projects.c.id == sa.bindparam("project_id"))
_COUNT_CHANGES = (
    projects.update()
    .where(projects.c.id == sa.bindparam("project_id"))
    .values(changes=projects.c.changes + sa.bindparam("n"))
)
_SET_LABEL = (
    annotations.update()
    .where(annotations.c.id == sa.bindparam("annotation_id"))
    .values(label=sa.bindparam("new_label"))
)
_BY_IDS = {
    table: sa.select(table).where(table.c.id.in_(sa.bindparam("ids", expanding=True)))
    for table in (projects, annotations)
}


def save_project(conn: Connection, project_id: int, values: Mapping[str, Any]) -> None:
    """Create or update a project row (title, label_config and the parsed config columns)."""
    row = {"id": project_id, "updated_at": utcnow(), **values}
    upsert(conn, projects, [row], ["id"], [k for k in row if k != "id"])


def add_project(conn: Connection, project_id: int, values: Mapping[str, Any]) -> None:
    """Create a project row unless one exists (an existing row is left as it is)."""
    row = {"id": project_id, "updated_at": utcnow(), **values}
    upsert(conn, projects, [row], ["id"])


def mark_caught_up(conn: Connection, project_id: int, when: datetime) -> None:
    conn.execute(projects.update().where(projects.c.id == project_id).values(caught_up_at=when))


def never_caught_up(conn: Connection) -> list[int]:
    """Supported projects that catch-up never compared with Label Studio."""
    stmt = (
        sa.select(projects.c.id)
        .where(projects.c.caught_up_at.is_(None), projects.c.unsupported_reason.is_(None))
        .order_by(projects.c.id)
    )
    return [int(i) for i in conn.execute(stmt).scalars()]


def get_project(conn: Connection, project_id: int) -> Row[Any] | None:
    return conn.execute(_PROJECT, {"project_id": project_id}).first()


def list_projects(conn: Connection) -> Sequence[Row[Any]]:
    return conn.execute(sa.select(projects).order_by(projects.c.id)).all()


def save_tasks(conn: Connection, project_id: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """Upsert live tasks ``{"id", "data"}`` (a deleted task stays deleted)."""
    values = [
        {"id": int(r["id"]), "project_id": project_id, "data": r["data"], "deleted": False}
        for r in rows
    ]
    save_task_rows(conn, values)


def save_task_rows(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Upsert tasks ``{"id", "project_id", "data", "deleted"}`` (image columns untouched).

    A deleted task is never revived: Label Studio never reuses a task id, so whatever names a
    deleted task later (a late annotation webhook, a catch-up listing older than the deletion)
    is older news than the deletion."""
    if rows:
        conn.execute(_save_tasks_statement(conn.dialect.name), [dict(row) for row in rows])


def delete_tasks(conn: Connection, project_id: int, task_ids: Sequence[int]) -> None:
    """Mark these tasks deleted; one never seen gets a tombstone row, so that an older event
    naming it (a catch-up listing that saw it alive) cannot create it afterwards."""
    rows = [{"id": i, "project_id": project_id, "data": {}, "deleted": True} for i in task_ids]
    upsert(conn, tasks, rows, ["id"], ["deleted"])


def task_states(conn: Connection, project_id: int) -> dict[int, tuple[Any, bool]]:
    """task id -> (data, deleted) for every task of the project the log has folded."""
    stmt = sa.select(tasks.c.id, tasks.c.data, tasks.c.deleted).where(
        tasks.c.project_id == project_id
    )
    return {row.id: (row.data, row.deleted) for row in conn.execute(stmt)}


@functools.cache
def _save_tasks_statement(dialect_name: str) -> sa.Insert:
    """Built once per dialect: an upsert that leaves deleted rows as they are."""
    stmt = (postgresql.insert if dialect_name == "postgresql" else sqlite.insert)(tasks)
    return stmt.on_conflict_do_update(
        index_elements=["id"],
        set_={c: stmt.excluded[c] for c in ("project_id", "data", "deleted")},
        where=tasks.c.deleted.is_(False),
    )


def set_task_image(
    conn: Connection,
    task_id: int,
    *,
    image_hash: str | None,
    error: str | None,
    uri: str | None = None,
) -> None:
    """What fetching the task's image gave: the bytes' hash (and the URI they came from), or
    the reason there are none."""
    conn.execute(
        tasks.update()
        .where(tasks.c.id == task_id)
        .values(image_hash=image_hash, image_uri=uri if image_hash else None, image_error=error)
    )


def projects_by_id(conn: Connection, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The stored rows of these projects, by id, as plain dicts (absent ones are left out)."""
    return _rows_by_id(conn, projects, ids)


def annotations_by_id(conn: Connection, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The stored rows of these annotations (tombstones included), by id, as plain dicts."""
    return _rows_by_id(conn, annotations, ids)


def save_annotations(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Upsert whole annotation rows (every column); the fold decides what is newer."""
    upsert(conn, annotations, rows, ["id"], ANNOTATION_COLUMNS)


def count_changes(conn: Connection, changes: Mapping[int, int]) -> None:
    """Add to each project's count of changes to its training data."""
    for project_id, n in sorted(changes.items()):
        if n:
            conn.execute(_COUNT_CHANGES, {"project_id": project_id, "n": n})


def live_annotations(conn: Connection, project_id: int) -> list[dict[str, Any]]:
    """The project's live, non-skipped annotation rows, as plain dicts: the ones whose label a
    config change can re-derive (tombstones and skips never carry one)."""
    stmt = sa.select(annotations).where(
        annotations.c.project_id == project_id,
        annotations.c.deleted.is_(False),
        annotations.c.was_cancelled.is_(False),
    )
    return [dict(row._mapping) for row in conn.execute(stmt)]


def set_labels(conn: Connection, changed: Sequence[tuple[int, str | None]]) -> None:
    """Set the labels of these annotations, ``(id, label)``, in one executemany."""
    if changed:
        conn.execute(_SET_LABEL, [{"annotation_id": i, "new_label": label} for i, label in changed])


def annotation_states(conn: Connection, project_id: int) -> dict[int, tuple[str, bool]]:
    """annotation id -> (updated_at, deleted) for every annotation the log has folded."""
    stmt = sa.select(annotations.c.id, annotations.c.updated_at, annotations.c.deleted).where(
        annotations.c.project_id == project_id
    )
    return {row.id: (row.updated_at, row.deleted) for row in conn.execute(stmt)}


def count_annotations(conn: Connection, project_id: int) -> int:
    """Current, non-deleted, non-skipped annotations of a project."""
    stmt = sa.select(sa.func.count()).where(
        annotations.c.project_id == project_id,
        annotations.c.deleted.is_(False),
        annotations.c.was_cancelled.is_(False),
    )
    return int(conn.execute(stmt).scalar_one())


def training_labels(conn: Connection, project_id: int) -> dict[int, str]:
    """task id -> label, from the newest labeled annotation of each task."""
    stmt = (
        sa.select(annotations.c.task_id, annotations.c.label, annotations.c.updated_at)
        .where(
            annotations.c.project_id == project_id,
            annotations.c.deleted.is_(False),
            annotations.c.was_cancelled.is_(False),
            annotations.c.label.is_not(None),
        )
        .order_by(annotations.c.updated_at, annotations.c.id)
    )
    return {row.task_id: row.label for row in conn.execute(stmt)}


def get_task(conn: Connection, task_id: int) -> Row[Any] | None:
    return conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).first()


def project_tasks(conn: Connection, project_id: int) -> Sequence[Row[Any]]:
    stmt = (
        sa.select(tasks)
        .where(tasks.c.project_id == project_id, tasks.c.deleted.is_(False))
        .order_by(tasks.c.id)
    )
    return conn.execute(stmt).all()


def image_failures(conn: Connection, project_id: int, limit: int = 20) -> list[tuple[int, str]]:
    stmt = (
        sa.select(tasks.c.id, tasks.c.image_error)
        .where(tasks.c.project_id == project_id, tasks.c.image_error.is_not(None))
        .order_by(tasks.c.id)
        .limit(limit)
    )
    return [(row.id, row.image_error) for row in conn.execute(stmt)]


def _rows_by_id(conn: Connection, table: sa.Table, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    unique = sorted(set(ids))
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(unique), 500):  # under every database's bound-parameter limit
        chunk = unique[start : start + 500]
        found.update(
            (row.id, dict(row._mapping)) for row in conn.execute(_BY_IDS[table], {"ids": chunk})
        )
    return found


def is_newer(candidate: str, stored: str) -> bool:
    """Whether Label Studio timestamp ``candidate`` is later than ``stored``."""
    try:
        return _parse(candidate) > _parse(stored)
    except (ValueError, TypeError):  # unparseable or naive/aware mix: ISO strings sort in order
        return candidate > stored


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)
