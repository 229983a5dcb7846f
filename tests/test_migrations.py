"""The Alembic migrations are what creates the schema, and they run both ways."""

import sqlalchemy as sa

from storage.migrate import downgrade, upgrade
from storage.tables import metadata


def test_upgrade_creates_every_table_and_downgrade_removes_them(database_url: str) -> None:
    upgrade(database_url)
    engine = sa.create_engine(database_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        assert set(metadata.tables) <= tables
        upgrade(database_url)  # a second upgrade at head is a no-op
        downgrade(database_url, "base")
        engine.dispose()
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
