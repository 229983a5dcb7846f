"""The label-review queue: annotations the model confidently disagrees with, per project.

``replace`` stores a head version's suspects in place of the project's previous ones;
``listing`` reads them back, most suspicious first, leaving out any whose annotation changed
or went since (a reviewer who fixed a label takes it off the queue without a retrain).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage.tables import annotations, suspects

_LIVE = sa.and_(
    annotations.c.deleted.is_(False),
    annotations.c.was_cancelled.is_(False),
    annotations.c.label.is_not(None),
)


def training_annotations(conn: Connection, project_id: int) -> dict[int, dict[str, Any]]:
    """task id -> ``{"annotation", "label", "annotator"}`` of the annotation whose label the
    task trains on: the newest labeled one, as ``labels.training_labels`` chooses it."""
    stmt = (
        sa.select(
            annotations.c.task_id,
            annotations.c.id,
            annotations.c.label,
            annotations.c.annotator,
        )
        .where(annotations.c.project_id == project_id, _LIVE)
        .order_by(annotations.c.updated_at, annotations.c.id)
    )
    return {
        row.task_id: {"annotation": row.id, "label": row.label, "annotator": row.annotator}
        for row in conn.execute(stmt)
    }


def replace(
    conn: Connection, project_id: int, version: str, rows: Sequence[Mapping[str, Any]]
) -> None:
    """The project's suspects become ``rows`` (``task``, ``annotation``, ``label``,
    ``predicted``, ``score``, ``annotator``), found by ``version``."""
    conn.execute(suspects.delete().where(suspects.c.project_id == project_id))
    if rows:
        conn.execute(
            suspects.insert(),
            [
                {
                    "project_id": project_id,
                    "task_id": int(r["task"]),
                    "annotation_id": int(r["annotation"]),
                    "version": version,
                    "label": str(r["label"]),
                    "predicted": str(r["predicted"]),
                    "score": float(r["score"]),
                    "annotator": r.get("annotator"),
                }
                for r in rows
            ],
        )


def listing(conn: Connection, project_id: int, limit: int | None = None) -> list[dict[str, Any]]:
    """The project's current suspects, most suspicious first (ties: by task): those whose
    annotation is still live and still carries the label it was suspected for."""
    stmt = (
        sa.select(
            suspects.c.task_id,
            suspects.c.annotation_id,
            suspects.c.label,
            suspects.c.predicted,
            suspects.c.score,
            sa.func.coalesce(annotations.c.annotator, suspects.c.annotator).label("annotator"),
            suspects.c.version,
        )
        .join(annotations, annotations.c.id == suspects.c.annotation_id)
        .where(suspects.c.project_id == project_id, _LIVE)
        .where(annotations.c.label == suspects.c.label)
        .order_by(suspects.c.score.desc(), suspects.c.task_id)
        .limit(limit)
    )
    return [
        {
            "task": row.task_id,
            "annotation": row.annotation_id,
            "label": row.label,
            "predicted": row.predicted,
            "score": row.score,
            "annotator": row.annotator,
            "version": row.version,
        }
        for row in conn.execute(stmt)
    ]


def annotator_rates(conn: Connection, project_id: int) -> list[dict[str, Any]]:
    """Per annotator (None: unknown): their live labeled annotations, how many of them are
    current suspects, and the share; most disagreed-with first."""
    counts = sa.select(annotations.c.annotator, sa.func.count().label("n")).where(
        annotations.c.project_id == project_id, _LIVE
    )
    total = {row.annotator: int(row.n) for row in conn.execute(counts.group_by("annotator"))}
    flagged: dict[int | None, int] = {}
    for suspect in listing(conn, project_id):
        flagged[suspect["annotator"]] = flagged.get(suspect["annotator"], 0) + 1
    rates = [
        {
            "annotator": annotator,
            "annotations": n,
            "suspects": flagged.get(annotator, 0),
            "rate": flagged.get(annotator, 0) / n,
        }
        for annotator, n in total.items()
        if n
    ]
    return sorted(rates, key=lambda r: (-r["rate"], -r["annotations"], r["annotator"] or 0))
