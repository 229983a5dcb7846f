"""projects.targets: several Choices or multiple choice; label columns widened to text

A project with several Choices bound to its Image, or a multiple-choice one, stores its targets
(``[{"from_name", "choices", "multiple"}]``) and labels each task with a canonical JSON string
(service/labelstudio/targets.py), which may exceed 255 characters. The classic project keeps
``targets`` NULL and its labels as they are. SQLite does not enforce VARCHAR lengths, so the
widening alters Postgres only (no table copy on SQLite).

Revision ID: 0007_label_targets
Revises: 0006_pushed
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_label_targets"
down_revision: str | None = "0006_pushed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LABELS = (("annotations", True), ("pushed", False))  # (table, nullable)


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("targets", sa.JSON(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        for table, nullable in _LABELS:
            op.alter_column(
                table, "label", type_=sa.Text(), existing_type=sa.String(255),
                existing_nullable=nullable,
            )  # fmt: skip


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, nullable in _LABELS:
            op.alter_column(
                table, "label", type_=sa.String(255), existing_type=sa.Text(),
                existing_nullable=nullable, postgresql_using="left(label, 255)",
            )  # fmt: skip
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("targets")
