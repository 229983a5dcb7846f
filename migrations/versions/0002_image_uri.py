"""tasks.image_uri: the image URI a task's image_hash was fetched from

A task's cached embedding is valid only for the URI it was downloaded from: a task whose image
URL changes (its data edited, a re-import, the data Label Studio sends to /predict) is fetched
again. Rows from before this revision have no URI (NULL): the next job fetches their images
once more (their embeddings are still cached by content, so it costs no forward pass).

Revision ID: 0002_image_uri
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_image_uri"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_uri", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("image_uri")
