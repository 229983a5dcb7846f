"""The label state folded from the event log: projects, tasks and their current annotations.

Folding is idempotent: an annotation change applies only if its ``updated_at`` is newer than
what is stored, deletions leave tombstones, and ``projects.changes`` counts only changes that
touch training data (so a redelivered webhook never counts twice).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from storage.db import for_update, upsert, utcnow
from storage.tables import annotations, projects, tasks


@dataclass(frozen=True)
class Annotation:
    id: int
    task_id: int
    project_id: int
    label: str | None
    was_cancelled: bool
    updated_at: str

    @property
    def is_training_data(self) -> bool:
        return self.label is not None and not self.was_cancelled


def save_project(conn: Connection, project_id: int, values: Mapping[str, Any]) -> None:
    """Create or update a project row (title, label_config and the parsed config columns)."""
    row = {"id": project_id, "updated_at": utcnow(), **values}
    upsert(conn, projects, [row], ["id"], [k for k in row if k != "id"])


def get_project(conn: Connection, project_id: int) -> Row[Any] | None:
    return conn.execute(sa.select(projects).where(projects.c.id == project_id)).first()


def list_projects(conn: Connection) -> Sequence[Row[Any]]:
    return conn.execute(sa.select(projects).order_by(projects.c.id)).all()


def save_tasks(conn: Connection, project_id: int, rows: Sequence[Mapping[str, Any]]) -> None:
    """Upsert tasks ``{"id", "data"}``; a task seen again is no longer deleted."""
    values = [
        {"id": int(r["id"]), "project_id": project_id, "data": r["data"], "deleted": False}
        for r in rows
    ]
    upsert(conn, tasks, values, ["id"], ["project_id", "data", "deleted"])


def delete_tasks(conn: Connection, task_ids: Sequence[int]) -> None:
    if task_ids:
        conn.execute(tasks.update().where(tasks.c.id.in_(task_ids)).values(deleted=True))


def set_task_image(
    conn: Connection, task_id: int, *, image_hash: str | None, error: str | None
) -> None:
    conn.execute(
        tasks.update().where(tasks.c.id == task_id).values(image_hash=image_hash, image_error=error)
    )


def apply_annotation(conn: Connection, new: Annotation) -> bool:
    """Fold one created/updated annotation; True when it changed training data."""
    stmt = sa.select(annotations).where(annotations.c.id == new.id)
    old = conn.execute(for_update(conn, stmt)).first()
    if old is not None and (old.deleted or not _newer(new.updated_at, old.updated_at)):
        return False  # a redelivery, an out-of-order older version, or a deleted annotation
    values = {
        "task_id": new.task_id,
        "project_id": new.project_id,
        "label": new.label,
        "was_cancelled": new.was_cancelled,
        "updated_at": new.updated_at,
    }
    if old is None:
        conn.execute(annotations.insert().values(id=new.id, **values))
    else:
        conn.execute(annotations.update().where(annotations.c.id == new.id).values(**values))
    was_training = old is not None and old.label is not None and not old.was_cancelled
    changed = was_training or new.is_training_data
    if changed:
        _count_change(conn, new.project_id)
    return changed


def delete_annotation(conn: Connection, annotation_id: int, project_id: int) -> bool:
    """Tombstone an annotation; True when it was training data."""
    stmt = sa.select(annotations).where(annotations.c.id == annotation_id)
    old = conn.execute(for_update(conn, stmt)).first()
    if old is None:
        # Never seen: remember the deletion so a late create does not bring it back.
        conn.execute(
            annotations.insert().values(
                id=annotation_id, task_id=0, project_id=project_id, deleted=True, updated_at=""
            )
        )
        return False
    if old.deleted:
        return False
    conn.execute(annotations.update().where(annotations.c.id == annotation_id).values(deleted=True))
    changed = old.label is not None and not old.was_cancelled
    if changed:
        _count_change(conn, old.project_id)
    return changed


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


def _count_change(conn: Connection, project_id: int) -> None:
    conn.execute(
        projects.update().where(projects.c.id == project_id).values(changes=projects.c.changes + 1)
    )


def is_newer(candidate: str, stored: str) -> bool:
    """Whether Label Studio timestamp ``candidate`` is later than ``stored``."""
    return _newer(candidate, stored)


def _newer(candidate: str, stored: str) -> bool:
    try:
        return _parse(candidate) > _parse(stored)
    except (ValueError, TypeError):  # unparseable or naive/aware mix: ISO strings sort in order
        return candidate > stored


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)
