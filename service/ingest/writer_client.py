"""The server's side of the writer process: append an event over the pipe, wait for its commit.

`labelloop serve` stores webhooks through this (service/writer_process.py explains why). The
rule does not change: a webhook is answered 200 only once the writer says its event is committed.
If the writer is down or the database refuses, the event is not stored and the webhook says so
(503); the writer is started again, with a pause that grows, until it stays up.

The pipes are read and written with the event loop's reader/writer callbacks on raw
non-blocking file descriptors: asyncio's subprocess streams cost a task wake-up and a transport
per answer, about 50 us of the server's time a webhook (bench/ingest.py).
"""

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

from service.ingest import writer_frames as frames
from service.settings import Settings
from storage.events import Appended

logger = logging.getLogger(__name__)

READ_CHUNK = 1 << 16
RESTART_PAUSES = (0.1, 0.5, 2.0, 5.0)  # seconds before each restart of a writer that exited
CODE_ROOT = str(Path(__file__).resolve().parent.parent)  # the folder holding service/
STOP_GRACE = 10.0  # seconds the writer gets to finish its batch once the pipe is closed


class EventNotStored(Exception):
    """The writer could not store an event (the database refused, or the writer is down)."""


class WriterProcess:
    def __init__(self, settings: Settings, on_jobs_queued: Callable[[], None]) -> None:
        self._settings = settings
        self._on_jobs_queued = on_jobs_queued
        self._proc: subprocess.Popen[bytes] | None = None
        self._exited = asyncio.Event()  # its stdout reached the end: it exited or is exiting
        self._reader = frames.FrameReader()
        self._waiting: deque[asyncio.Future[Appended]] = deque()
        self._outgoing = bytearray()  # not yet written into its stdin
        self._restarts = 0
        self._stopping = False

    async def start(self) -> None:
        """Start the writer and hand it the settings (it connects to the database itself)."""
        env = dict(os.environ)
        # Wherever this server was imported from, the writer imports the same code.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [CODE_ROOT, env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "service.ingest.writer_process"]
        # Popen, not asyncio's subprocess streams (see above); forking takes about a millisecond.
        proc = subprocess.Popen(  # noqa: ASYNC220
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdin.fileno(), False)
        os.set_blocking(proc.stdout.fileno(), False)
        self._proc, self._reader = proc, frames.FrameReader()
        self._exited.clear()
        asyncio.get_running_loop().add_reader(proc.stdout.fileno(), self._on_readable, proc)
        self._send(frames.settings_frame(self._settings))

    async def append(self, action: str, project_id: int | None, body: str) -> Appended:
        """The event's id once the writer has committed it (or found it already stored)."""
        if self._proc is None:
            raise EventNotStored("the log writer is not running")
        done: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._waiting.append(done)
        self._send(frames.event_frame(action, project_id, body))
        return await done

    def notify_appended(self) -> None:
        """Events were appended outside the writer (catch-up): have it fold them now."""
        if self._proc is not None:
            self._send(frames.frame(frames.WAKE))

    def down_reason(self) -> str | None:
        return None if self._proc is not None else "the log writer is not running (restarting)"

    async def run(self) -> None:
        """Watch the writer; start it again whenever it exits, until stop()."""
        while not self._stopping:
            pause = RESTART_PAUSES[min(self._restarts, len(RESTART_PAUSES) - 1)]
            if self._proc is None:
                try:
                    await self.start()
                except OSError as exc:
                    logger.error("cannot start the log writer (%s); retrying in %.1f s", exc, pause)
                    self._restarts += 1
                    await asyncio.sleep(pause)
                    continue
            proc = self._proc
            assert proc is not None
            await self._exited.wait()
            if self._stopping:
                return
            self._detach(proc)  # appends fail fast (503) until the restart
            code = await asyncio.to_thread(proc.wait)
            self._fail_waiting(f"the log writer exited with code {code}")
            self._restarts += 1
            logger.error("the log writer exited with code %s; restarting in %.1f s", code, pause)
            await asyncio.sleep(pause)

    async def stop(self) -> None:
        """Close the pipe: the writer answers what it took, then exits (bounded)."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            return
        if self._outgoing and proc.stdin is not None and not proc.stdin.closed:
            # What is queued is written before the pipe closes (the writer keeps reading).
            os.set_blocking(proc.stdin.fileno(), True)
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(self._outgoing)
                proc.stdin.flush()
            self._outgoing.clear()
        try:
            async with asyncio.timeout(STOP_GRACE):
                self._close_stdin(proc)
                await self._exited.wait()  # its last answers are read
                await asyncio.to_thread(proc.wait)
        except TimeoutError:
            logger.error("the log writer did not stop within %.0f s; killing it", STOP_GRACE)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.to_thread(proc.wait)
        self._detach(proc)
        self._fail_waiting("the server is stopping")

    # -- the pipes ------------------------------------------------------------------------------

    def _on_readable(self, proc: "subprocess.Popen[bytes]") -> None:
        assert proc.stdout is not None
        try:
            data = os.read(proc.stdout.fileno(), READ_CHUNK)
        except BlockingIOError:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(proc.stdout.fileno())
            self._exited.set()
            return
        for kind, payload in self._reader.feed(data):
            if kind == frames.JOBS:
                self._on_jobs_queued()
                continue
            self._restarts = 0  # it answers: it is up
            done = self._waiting.popleft()
            if done.done():  # the webhook went away meanwhile; its event is stored anyway
                continue
            if kind == frames.STORED:
                done.set_result(Appended(*frames.read_stored(payload)))
            else:
                done.set_exception(EventNotStored(payload.decode(errors="replace")))

    def _send(self, frame: bytes) -> None:
        """Queue ``frame``; everything queued in one turn of the loop goes in one write."""
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush, self._proc)
        self._outgoing += frame

    def _flush(self, proc: "subprocess.Popen[bytes] | None") -> None:
        if proc is None or proc is not self._proc or proc.stdin is None or proc.stdin.closed:
            self._outgoing.clear()  # for a writer that is gone: its waiters get an error
            return
        fd = proc.stdin.fileno()
        loop = asyncio.get_running_loop()
        try:
            written = os.write(fd, self._outgoing)
        except BlockingIOError:
            written = 0
        except BrokenPipeError:
            self._outgoing.clear()  # it died: run() fails the waiters and restarts it
            return
        del self._outgoing[:written]
        if self._outgoing:  # the pipe is full: go on when it drains
            loop.add_writer(fd, self._on_writable, proc)

    def _on_writable(self, proc: "subprocess.Popen[bytes]") -> None:
        assert proc.stdin is not None
        asyncio.get_running_loop().remove_writer(proc.stdin.fileno())
        self._flush(proc)

    def _close_stdin(self, proc: "subprocess.Popen[bytes]") -> None:
        if proc.stdin is not None and not proc.stdin.closed:
            asyncio.get_running_loop().remove_writer(proc.stdin.fileno())
            proc.stdin.close()

    def _detach(self, proc: "subprocess.Popen[bytes]") -> None:
        loop = asyncio.get_running_loop()
        if proc.stdout is not None and not proc.stdout.closed:
            loop.remove_reader(proc.stdout.fileno())
            proc.stdout.close()
        self._close_stdin(proc)
        if self._proc is proc:
            self._proc = None
        self._outgoing.clear()

    def _fail_waiting(self, reason: str) -> None:
        while self._waiting:
            done = self._waiting.popleft()
            if not done.done():
                done.set_exception(EventNotStored(reason))
