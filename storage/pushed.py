"""What labelloop holds in Label Studio: per project, the one model_version name its predictions
carry there, and per task the prediction pushed under it (or being pushed: ``uncertain``).

A push compares the active version's predictions with these rows and writes only the tasks
whose label changed or whose score moved; a write begins by marking its rows uncertain (their
intended label and score) and ends by marking them pushed, each in its own transaction, so a
crash in between leaves exactly the tasks to check in Label Studio.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage.db import upsert
from storage.tables import model_versions, projects, pushed

PUSHED, UNCERTAIN = "pushed", "uncertain"


@dataclass(frozen=True)
class Held:
    """A task's labelloop prediction in Label Studio."""

    label: str
    score: float
    version: str  # the labelloop version that made it
    state: str = PUSHED


def label_studio_version(conn: Connection, project_id: int) -> str | None:
    stmt = sa.select(projects.c.label_studio_version).where(projects.c.id == project_id)
    value = conn.execute(stmt).scalar()
    return None if value is None else str(value)


def claim_label_studio_version(conn: Connection, project_id: int, name: str) -> str:
    """Set the project's name to ``name`` unless it has one; returns the project's name (a
    concurrent first push may have set it first)."""
    conn.execute(
        projects.update()
        .where(projects.c.id == project_id, projects.c.label_studio_version.is_(None))
        .values(label_studio_version=name)
    )
    return label_studio_version(conn, project_id) or name


def labelloop_names(conn: Connection, project_id: int) -> set[str]:
    """Every version name of this project's versions (labelloop's own, whatever pushed them)."""
    stmt = sa.select(model_versions.c.version).where(model_versions.c.project_id == project_id)
    return {str(name) for name in conn.execute(stmt).scalars()}


def held(conn: Connection, project_id: int) -> dict[int, Held]:
    """Every row of the project, by task id."""
    stmt = sa.select(pushed).where(pushed.c.project_id == project_id)
    return {
        int(r.task_id): Held(str(r.label), float(r.score), str(r.version), str(r.state))
        for r in conn.execute(stmt)
    }


def uncertain(conn: Connection, project_id: int) -> list[int]:
    stmt = sa.select(pushed.c.task_id).where(
        pushed.c.project_id == project_id, pushed.c.state == UNCERTAIN
    )
    return sorted(int(t) for t in conn.execute(stmt).scalars())


def count(conn: Connection, project_id: int) -> int:
    stmt = sa.select(sa.func.count()).select_from(pushed).where(pushed.c.project_id == project_id)
    return int(conn.execute(stmt).scalar() or 0)


def mark(conn: Connection, project_id: int, rows: Mapping[int, Held]) -> None:
    """Store ``rows`` (task id -> what it holds, with its state), replacing what was there."""
    upsert(
        conn,
        pushed,
        [
            {
                "project_id": project_id,
                "task_id": task_id,
                "label": h.label,
                "score": h.score,
                "version": h.version,
                "state": h.state,
            }
            for task_id, h in rows.items()
        ],
        keys=("project_id", "task_id"),
        update=("label", "score", "version", "state"),
    )


def mark_pushed(conn: Connection, project_id: int, task_ids: Sequence[int]) -> None:
    for start in range(0, len(task_ids), 500):
        conn.execute(
            pushed.update()
            .where(
                pushed.c.project_id == project_id,
                pushed.c.task_id.in_(list(task_ids[start : start + 500])),
            )
            .values(state=PUSHED)
        )


def forget(conn: Connection, project_id: int, task_ids: Iterable[int]) -> None:
    """These tasks hold nothing of labelloop's (any more)."""
    ids = list(task_ids)
    for start in range(0, len(ids), 500):
        conn.execute(
            pushed.delete().where(
                pushed.c.project_id == project_id, pushed.c.task_id.in_(ids[start : start + 500])
            )
        )


def replace_all(conn: Connection, project_id: int, rows: Mapping[int, Held]) -> None:
    """The project holds exactly ``rows`` (a repair from Label Studio's own list)."""
    conn.execute(pushed.delete().where(pushed.c.project_id == project_id))
    mark(conn, project_id, rows)
