"""suspects: the label-review queue of each project; annotations.annotator

After each head retrain, out-of-fold probabilities flag the annotations the model confidently
disagrees with (service/vision/suspects.py); the newest set per project is kept here. The
annotator (Label Studio's ``completed_by`` user id) is stored beside each annotation from now
on, for the per-annotator disagreement rates; existing annotations get it when Label Studio
next sends them (a webhook, or a catch-up that finds them changed), else it stays NULL.

Revision ID: 0008_suspects
Revises: 0007_label_targets
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_suspects"
down_revision: str | None = "0007_label_targets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("annotator", sa.Integer(), nullable=True))
    op.create_table(
        "suspects",
        sa.Column("project_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("task_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("predicted", sa.String(255), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("annotator", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("project_id", "task_id", name=op.f("pk_suspects")),
    )


def downgrade() -> None:
    op.drop_table("suspects")
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.drop_column("annotator")
