"""The Alembic migrations are what creates the schema, and they run both ways."""

import sqlalchemy as sa

from storage.db import create_engine, reading, utcnow
from storage.migrate import downgrade, upgrade
from storage.tables import events, metadata


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


def test_a_reader_never_holds_the_write_lock(database_url: str) -> None:
    """Status pages and metrics read in snapshots; a webhook's commit must not wait on them."""
    upgrade(database_url)
    engine = create_engine(database_url)
    try:
        with reading(engine) as reader:
            assert reader.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 0
            with engine.begin() as writer:  # would wait out the busy timeout if it were locked
                writer.execute(
                    events.insert().values(
                        action="X", body="{}", source="webhook", received_at=utcnow()
                    )
                )
    finally:
        engine.dispose()
