"""annotations.result: the raw result, so labels can be re-derived when the config changes

Revision ID: 0004_annotation_result
Revises: 0003_version_training_labels
Create Date: 2026-12-02

Existing annotations get their result from the event log: the newest logged version of each
annotation whose timestamp is the one folded (one pass over each project's annotation events).
What the log does not hold stays NULL; its label is kept while the config still offers it.
"""

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004_annotation_result"
down_revision: str | None = "0003_version_training_labels"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")

annotations = sa.table(
    "annotations",
    sa.column("id", sa.Integer),
    sa.column("project_id", sa.Integer),
    sa.column("updated_at", sa.String),
    sa.column("deleted", sa.Boolean),
    sa.column("result", sa.Text),
)
events = sa.table(
    "events",
    sa.column("id", sa.Integer),
    sa.column("project_id", sa.Integer),
    sa.column("action", sa.String),
    sa.column("body", sa.Text),
)


def upgrade() -> None:
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("result", sa.Text(), nullable=True))
    _backfill(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.drop_column("result")


def _backfill(conn: sa.Connection) -> None:
    live = sa.select(annotations.c.project_id).where(annotations.c.deleted.is_(False)).distinct()
    for project_id in conn.execute(live).scalars().all():
        folded = {
            row.id: row.updated_at
            for row in conn.execute(
                sa.select(annotations.c.id, annotations.c.updated_at).where(
                    annotations.c.project_id == project_id, annotations.c.deleted.is_(False)
                )
            )
        }
        found: dict[int, str] = {}
        logged = (
            sa.select(events.c.body)
            .where(events.c.project_id == project_id, events.c.action.in_(ANNOTATION_ACTIONS))
            .order_by(events.c.id)
            .execution_options(yield_per=500)
        )
        for body in conn.execute(logged).scalars():
            for annotation_id, updated_at, result in _annotations_in(body):
                if folded.get(annotation_id) == updated_at:
                    found[annotation_id] = json.dumps(result)
        if found:
            conn.execute(
                annotations.update()
                .where(annotations.c.id == sa.bindparam("annotation_id"))
                .values(result=sa.bindparam("raw")),
                [{"annotation_id": i, "raw": raw} for i, raw in sorted(found.items())],
            )


def _annotations_in(body: str) -> list[tuple[int, str, Any]]:
    """(id, timestamp, result) of each annotation in a logged body, as the fold read them."""
    try:
        given = json.loads(body).get("annotation")
        items = given if isinstance(given, list) else [given]
        return [
            (
                int(a["id"]),
                str(a.get("updated_at") or a.get("created_at") or ""),
                a.get("result") or [],
            )
            for a in items
            if isinstance(a, dict)
        ]
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return []  # the fold skipped it too
