"""Run the Alembic migrations under ``migrations/`` programmatically (``labelloop migrate``).

On Postgres each run holds an advisory lock for its transaction, so replicas that start
together migrate one after the other instead of racing on the DDL.
"""

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# The Postgres advisory lock every upgrade and downgrade holds for its transaction
# (migrations/env.py), so concurrent ones run one after the other. Any fixed 64-bit number
# that nothing else in the database locks on: b"labelloo", halved to fit a signed bigint.
MIGRATION_LOCK_KEY = int.from_bytes(b"labelloo", "big") >> 1


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is interpolated: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)
