"""projects.caught_up_at: when catch-up last brought the project to Label Studio's truth

A project never caught up (NULL) is caught up before labelloop reports on it or trains it:
annotations made before ``labelloop register`` are learned. Existing projects count as caught up
when they were last written: earlier versions caught every known project up at start and every
``label_studio.catch_up``, so a status request after the upgrade need not wait on a listing.

Revision ID: 0005_catch_up
Revises: 0004_annotation_result
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_catch_up"
down_revision: str | None = "0004_annotation_result"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("caught_up_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE projects SET caught_up_at = updated_at")


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("caught_up_at")
