"""`python -m service.ingest.writer_process`: the event log's writer, in a process of its own.

`labelloop serve` starts it and hands it every webhook over a pipe (service/writer_client.py).
It commits what has queued up in one transaction (group commit), answers each event only after
that commit, and folds the committed events into the label state on a thread of its own (and,
on SQLite, checkpoints the WAL on another: storage.db.Checkpointer). Moving this
out of the serving process is what makes ingest fast: the server's interpreter only parses and
answers, while the inserts and the fold (SQLAlchemy, ~0.1-0.3 ms of Python per event) run on
another core, without competing for one GIL.

A database error never ends it: what could not be committed is answered FAILED (the webhook
says 503; nothing is acknowledged that is not committed), the kept connection is replaced, and
the next batch and fold try again (tests/ingest/test_writer_survives.py).

It reads stdin until the server closes it (or dies), so it never outlives its server by more than
the batch in hand. It ignores SIGINT and SIGTERM: a Ctrl-C or a `kill` of the process group must
not cut it off before it has answered what it took; the server closes the pipe when it stops.
This module must never import torch.
"""

import contextlib
import gc
import logging
import os
import select
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from service.ingest import writer_frames as frames
from service.ingest.fold import FOLD_BATCH, FoldResult, fold_batch
from service.logs import configure_logging
from service.settings import Settings
from storage import events
from storage.db import Checkpointer, create_engine

logger = logging.getLogger("service.ingest.writer_process")

# An event waits at most this long to be folded while webhooks keep arriving...
FOLD_WITHIN = 0.1
# ...and is folded as soon as the pipe has been quiet this long.
FOLD_WHEN_QUIET = 0.01
# Events of other processes (catch-up, Postgres replicas) are folded at least this often.
POLL_INTERVAL = 5.0
READ_CHUNK = 1 << 20
FOLD_POLL = 0.005  # while a fold runs, how often the loop looks whether it is done


class Writer:
    """Inserts on the calling thread; folds on a thread of its own, so that on Postgres a fold
    never holds up an answer (on SQLite, with one writer at a time, they take turns)."""

    def __init__(self, engine: Engine, settings: Settings, out_fd: int) -> None:
        self._engine = engine
        self._settings = settings
        self._out_fd = out_fd
        self._conn: Connection | None = None  # kept open: a checkout per batch costs ~0.3 ms
        # SQLite: the inserts and the fold take turns here, not in SQLite's busy-retry sleeps
        # (and the checkpointer holds it for the checkpoint that lets the WAL start over).
        self.db_lock: contextlib.AbstractContextManager[object] = (
            threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )
        self._send_lock = threading.Lock()  # answers and the JOBS notice share the pipe
        self._folder = ThreadPoolExecutor(1, thread_name_prefix="fold")
        self._folding: Future[FoldResult] | None = None
        self.fold_due: float | None = time.monotonic()  # at start: what a crash left unfolded
        self.last_input = 0.0
        self.last_fold = 0.0

    def handle(self, received: list[tuple[bytes, bytes]]) -> None:
        """Store the events among ``received`` and answer them."""
        rows = [frames.read_event(payload) for kind, payload in received if kind == frames.EVENT]
        if any(kind == frames.WAKE for kind, _ in received):
            self._schedule_fold()
        if not rows:
            return
        answers = self._store(rows)
        if any(isinstance(a, events.Appended) and not a.duplicate for a in answers):
            self._schedule_fold()
        self._send(
            b"".join(
                frames.stored_frame(a.id, a.duplicate)
                if isinstance(a, events.Appended)
                else frames.frame(frames.FAILED, a.encode())
                for a in answers
            )
        )

    def fold_if_due(self, now: float) -> None:
        if self._folding is not None:
            if not self._folding.done():
                return
            self._folded(self._folding, now)
            self._folding = None
        if self.fold_due is None and now - self.last_fold >= POLL_INTERVAL:
            self.fold_due = now
        if self.fold_due is None:
            return
        if now < self.fold_due and now - self.last_input < FOLD_WHEN_QUIET:
            return
        self.last_fold, self.fold_due = now, None  # events from now on schedule the next one
        self._folding = self._folder.submit(self._fold)

    def wait_time(self, now: float) -> float:
        """How long to wait for input before folding is due (or a running fold is done)."""
        if self._folding is not None:
            return FOLD_POLL
        if self.fold_due is None:
            return max(0.0, self.last_fold + POLL_INTERVAL - now)
        return max(0.0, min(self.fold_due, self.last_input + FOLD_WHEN_QUIET) - now)

    def close(self) -> None:
        """At exit only: a fold in progress commits (or rolls back) first."""
        self._folder.shutdown(wait=True)
        self._drop_connection()

    def _fold(self) -> FoldResult:
        """One batch, on the fold thread."""
        with self.db_lock:
            result = fold_batch(self._engine, self._settings)
        if result.queued_jobs:
            self._send(frames.frame(frames.JOBS))
        return result

    def _folded(self, folding: "Future[FoldResult]", now: float) -> None:
        try:
            result = folding.result()
        except Exception:
            logger.exception("folding events failed; retrying")
            self.fold_due = now + 1.0
            return
        if result.events >= FOLD_BATCH:
            # There is more. While webhooks keep coming, one batch per FOLD_WITHIN (they come
            # first: the fold catches up once the pipe is quiet); else at once.
            deadline = now + FOLD_WITHIN
            self.fold_due = deadline if self.fold_due is None else min(self.fold_due, deadline)

    def _schedule_fold(self) -> None:
        deadline = time.monotonic() + FOLD_WITHIN
        self.fold_due = deadline if self.fold_due is None else min(self.fold_due, deadline)

    def _store(
        self, rows: list[tuple[str, int | None, str]], *, retry: bool = True
    ) -> list[events.Appended | str]:
        """Each row's Appended, or the name of the error that kept it out of the log.

        A connection the database dropped (a restart, a failover, a terminated backend) is
        replaced and the batch tried once more at once: the digest makes that safe even if the
        commit had landed. A database that is unavailable (locked past the busy timeout, down)
        fails the whole batch with its error (503: not stored), and the next batch tries again
        on a fresh connection; only an error about the data splits the batch.
        """
        try:
            conn = self._conn = self._conn or self._engine.connect()
            with self.db_lock, conn.begin():
                return list(events.append_many(conn, rows))
        except sa.exc.DBAPIError as exc:
            self._drop_connection()
            name = type(exc.orig).__name__
            if exc.connection_invalidated and retry:
                logger.warning("the database dropped the connection (%s); reconnecting", name)
                return self._store(rows, retry=False)
            if len(rows) == 1 or isinstance(exc, sa.exc.OperationalError):
                logger.error("%d events not stored: %s", len(rows), name)
                return [name] * len(rows)
        except Exception as exc:  # never die of it: the server answers 503, the next may land
            self._drop_connection()
            logger.exception("%d events not stored", len(rows))
            return [type(exc).__name__] * len(rows)
        # One event the database refuses must not fail its neighbours: one transaction each.
        return [answer for row in rows for answer in self._store([row])]

    def _drop_connection(self) -> None:
        """Forget the kept connection (it may be broken): the next batch opens a fresh one.
        The fold's thread pool stays: shutting it here killed the process at the next fold."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self._out_fd, view)
                except BrokenPipeError:
                    return  # the server is gone; what it waited for was committed anyway
                view = view[written:]


def serve(in_fd: int, out_fd: int) -> None:
    reader = frames.FrameReader()
    received: list[tuple[bytes, bytes]] = []
    while not received:  # the first frame is the settings
        if not (data := os.read(in_fd, READ_CHUNK)):
            return
        received = reader.feed(data)
    kind, payload = received.pop(0)
    if kind != frames.SETTINGS:
        raise SystemExit(f"writer: first frame must be the settings, not {kind!r}")
    settings = frames.read_settings(payload)
    configure_logging(settings.server.log_format, secrets=settings.secrets())
    engine = create_engine(settings.database.url, checkpoint_apart=True)
    writer = Writer(engine, settings, out_fd)
    checkpointer = None
    if engine.dialect.name == "sqlite":
        checkpointer = Checkpointer(engine, writers=writer.db_lock)
        checkpointer.start()
    gc.freeze()  # what is loaded by now lives forever: full collections skip it (~30 ms each)
    # The inserting thread gets the GIL back within 1 ms of the fold thread, not 5.
    sys.setswitchinterval(0.001)
    try:
        writer.handle(received)
        while True:
            now = time.monotonic()
            readable, _, _ = select.select([in_fd], [], [], writer.wait_time(now))
            if readable:
                if not (data := os.read(in_fd, READ_CHUNK)):
                    break  # the server closed the pipe, or died
                writer.handle(reader.feed(data))
                # Quiet means nothing arrived since this batch was answered (a batch that
                # waited for a fold must not make the pipe look quiet).
                writer.last_input = time.monotonic()
            writer.fold_if_due(time.monotonic())
    finally:
        if checkpointer is not None:
            checkpointer.stop()
        writer.close()
        engine.dispose()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(sys.stdin.fileno(), sys.stdout.fileno())


if __name__ == "__main__":
    main()
