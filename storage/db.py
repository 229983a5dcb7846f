"""Engines for SQLite and Postgres, and the one upsert both understand.

SQLite is tuned for durability first: WAL (readers never block the writer), ``synchronous=FULL``
(a commit is on disk before it is acknowledged, even across power loss), a busy timeout instead
of "database is locked" errors, and ``BEGIN IMMEDIATE`` so a transaction takes the write lock at
its start rather than failing half-way when two writers meet.
"""

import contextlib
import functools
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

SQLITE_BUSY_TIMEOUT_MS = 30_000
READONLY = "labelloop_readonly"


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_engine(url: str) -> Engine:
    """An engine for ``url``; a SQLite file's folder is created if it is missing."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, not the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Readers (status, page, metrics) need no write lock: WAL gives them a snapshot.
        readonly = conn.get_execution_options().get(READONLY, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: a consistent snapshot that takes no write lock on SQLite."""
    with engine.connect() as conn:
        conn.execution_options(**{READONLY: True})
        with conn.begin():
            yield conn


def upsert(
    conn: Connection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    update: Sequence[str] = (),
) -> None:
    """Insert ``rows``; on a key conflict update ``update`` columns (or do nothing)."""
    if rows:
        stmt = _upsert_statement(conn.dialect.name, table, tuple(keys), tuple(update))
        # Parameters apart from the statement: one compiled form, cached, for any rows.
        conn.execute(stmt, [dict(row) for row in rows])


@functools.cache
def _upsert_statement(
    dialect_name: str, table: sa.Table, keys: tuple[str, ...], update: tuple[str, ...]
) -> sa.Insert:
    """Built once per shape: building ``excluded`` costs about a millisecond each time."""
    stmt = (postgresql.insert if dialect_name == "postgresql" else sqlite.insert)(table)
    if update:
        return stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in update}
        )
    return stmt.on_conflict_do_nothing(index_elements=list(keys))


def for_update(conn: Connection, stmt: sa.Select[Any], *, skip_locked: bool = False) -> Any:
    """Row locks on Postgres; SQLite's BEGIN IMMEDIATE already serialises writers."""
    if conn.dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=skip_locked)
    return stmt
