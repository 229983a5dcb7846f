"""model_versions.training_labels: what each version was trained on, for a fair gate

Revision ID: 0003_version_training_labels
Revises: 0002_image_uri
Create Date: 2026-12-02

Nullable, no backfill: versions made before it do not know their training tasks, and the gate
promotes (saying why) rather than compare one of them unfairly.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_version_training_labels"
down_revision: str | None = "0002_image_uri"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("training_labels", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("training_labels")
