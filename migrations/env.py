"""Alembic environment: migrates the database named by ``sqlalchemy.url`` to ``tables.metadata``."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from storage.db import create_engine
from storage.migrate import MIGRATION_LOCK_KEY
from storage.tables import metadata

config = context.config
target_metadata = metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Replicas that start together would race on the DDL: the first to take the
                # lock migrates, the others wait for its commit and then find the schema at
                # head. Released with the transaction. SQLite's BEGIN IMMEDIATE serialises.
                lock = sa.text("SELECT pg_advisory_xact_lock(:key)")
                connection.execute(lock, {"key": MIGRATION_LOCK_KEY})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
