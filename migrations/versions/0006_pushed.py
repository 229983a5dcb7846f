"""pushed: what each project holds of labelloop's in Label Studio; projects.label_studio_version

Pushes cost what changed: a task's prediction is replaced only when its label or score moved,
and every prediction of a project carries one stable model_version name in Label Studio. An
existing install starts with no rows and no name: its next push chooses the name, imports every
unlabeled task's prediction under it, and deletes its older per-version names from Label Studio.

Revision ID: 0006_pushed
Revises: 0005_catch_up
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_pushed"
down_revision: str | None = "0005_catch_up"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("label_studio_version", sa.String(64), nullable=True))
    op.create_table(
        "pushed",
        sa.Column("project_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("task_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "task_id", name=op.f("pk_pushed")),
    )


def downgrade() -> None:
    op.drop_table("pushed")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("label_studio_version")
