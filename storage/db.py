"""Engines for SQLite and Postgres, and the one upsert both understand.

SQLite is tuned for durability first: WAL (readers never block the writer), ``synchronous=FULL``
(a commit is on disk before it is acknowledged, even across power loss), a busy timeout instead
of "database is locked" errors, and ``BEGIN IMMEDIATE`` so a transaction takes the write lock at
its start rather than failing half-way when two writers meet.
"""

import contextlib
import functools
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# The WAL restarts once it holds this many frames (4 KiB pages: 16 MiB); its file is cut back
# to WAL_SIZE_LIMIT when it does (it is otherwise left at its largest size ever).
WAL_RESTART_FRAMES = 4096
WAL_SIZE_LIMIT = 16 * 1024 * 1024
READONLY = "labelloop_readonly"


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_engine(url: str, *, checkpoint_apart: bool = False) -> Engine:
    """An engine for ``url``; a SQLite file's folder is created if it is missing.

    ``checkpoint_apart``: its commits never copy the WAL into the database file themselves
    (SQLite's auto-checkpoint, a few MB written and synced inside the commit that crosses 1000
    pages); a ``Checkpointer`` does it beside them instead.
    """
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
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        if checkpoint_apart:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Readers (status, page, metrics) need no write lock: WAL gives them a snapshot.
        readonly = conn.get_execution_options().get(READONLY, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


class Checkpointer:
    """Copies SQLite's WAL into the database file from a thread of its own, every ``interval``
    seconds, while the writer goes on committing (a PASSIVE checkpoint takes no write lock, and
    sqlite3 releases the GIL meanwhile). Measured in the writer process: 2,500-3,300 -> 3,700-4,900
    events/s (bench/ingest.py's bodies, 16 in flight). Durability is unchanged: a commit is in
    the synced WAL before it is acknowledged, and the checkpoint syncs the file before the WAL
    is reused.

    The WAL starts over from its beginning only when a write transaction begins with every
    frame already copied. Under a steady stream of commits one always lands while a checkpoint
    runs, so the WAL grew without end (165 MB after 10 s of bench load). Once it holds
    ``restart_frames`` frames, one checkpoint runs holding ``writers`` (the lock this process's
    writers take), so the next write transaction starts the WAL over; ``journal_size_limit``
    then cuts the file back.
    """

    def __init__(
        self,
        engine: Engine,
        writers: contextlib.AbstractContextManager[object],
        interval: float = 0.2,
        restart_frames: int = WAL_RESTART_FRAMES,
    ) -> None:
        self._engine = engine
        self._writers = writers
        self._interval = interval
        self._restart_frames = restart_frames
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpointer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def checkpoint(self, raw: Any) -> tuple[int, int]:
        """One PASSIVE checkpoint on ``raw`` (a DBAPI connection): (WAL frames, frames copied)."""
        _busy, log, copied = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(log), int(copied)

    def tick(self, raw: Any) -> None:
        """One round: copy what is new; if the WAL is long, copy the rest with writers held."""
        log, _ = self.checkpoint(raw)
        if log >= self._restart_frames:
            with self._writers:  # a few ms: the frames since the checkpoint just above
                self.checkpoint(raw)

    def _run(self) -> None:
        raw = self._engine.raw_connection()  # autocommit (isolation_level=None): no BEGIN
        try:
            while not self._stop.wait(self._interval):
                try:
                    self.tick(raw.driver_connection)
                except sqlite3.Error as exc:
                    logger.warning("WAL checkpoint failed (the next one retries): %s", exc)
        finally:
            raw.close()


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
