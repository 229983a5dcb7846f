"""Kill drill: nothing acknowledged is ever lost, not even across a `kill -9`.

Starts `labelloop serve --no-worker` on a fresh database, sends unique ANNOTATION_CREATED events
(~2 KB, the whole project object, a unique `drill` marker each) from concurrent clients, kills
the server with SIGKILL once a third of them are acknowledged, restarts it on the same database
and port, and sends the rest. A client whose request died with the server sends it again after
the restart (as a proxy would): the log's dedupe must answer with the first id if the event had
been committed. At the end every acknowledged event id must be in `events` with the very bytes
sent, no event may be stored twice, and every event must have been acknowledged.

Usage: .venv/bin/python bench/kill_drill.py [--events 5000] [--concurrency 32]
                                            [--database sqlite|postgres|both] [--postgres-url URL]

Postgres: a fresh database is created on the server of `--postgres-url` (default: the URL that
`scripts/postgres-up` prints) and dropped afterwards. `tests/test_kill_drill.py` runs a smaller
drill in the test suite. Traffic goes only to the 127.0.0.1 server this script starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from storage.db import create_engine  # noqa: E402
from tests import payloads  # noqa: E402

SECRET = "drill-webhook-secret"
API_TOKEN = "drill-api-token"
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 10.0
MAX_ATTEMPTS = 20  # per event; only a dead or restarting server costs attempts
PAD = 900  # Label Studio sends the whole project object: ~2 KB per event with this pad


# ---------------------------------------------------------------------------------------------
# payloads
# ---------------------------------------------------------------------------------------------


def event_body(seq: int, run: str, marker_key: str = "drill") -> bytes:
    """A realistic ANNOTATION_CREATED body, unique by (run, seq)."""
    event = payloads.annotation_event(seq + 1, seq + 1, "red" if seq % 2 else "blue")
    event["project"]["description"] = "x" * PAD
    event["project"]["expert_instruction"] = "<p>Pick the main colour of the picture.</p>"
    event["annotation"]["lead_time"] = 3.25
    event["annotation"]["result_count"] = 1
    event["task"]["meta"] = {}
    event["task"]["created_at"] = "2026-11-29T09:58:00.000000Z"
    event[marker_key] = {"run": run, "seq": seq}
    return json.dumps(event).encode()


# ---------------------------------------------------------------------------------------------
# the server under test
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def silent_port() -> Iterator[str]:
    """A loopback URL bound by us but not listening: Label Studio's address for a server under
    test, so its catch-up fails at once and sends nothing anywhere."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def settings_toml(database_url: str, port: int, label_studio_url: str) -> str:
    def q(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string

    return "\n".join(
        [
            "[server]",
            'host = "127.0.0.1"',
            f"port = {port}",
            f"api_token = {q(API_TOKEN)}",
            "[database]",
            f"url = {q(database_url)}",
            "[label_studio]",
            f"url = {q(label_studio_url)}",
            'api_key = "unused"',
            'catch_up = ""',
            "[webhook]",
            f"url = {q(f'http://127.0.0.1:{port}/webhook')}",
            f"secret = {q(SECRET)}",
            "[training]",
            "threshold = 1000000000",
            'weights = "none"',
            'device = "cpu"',
            "",
        ]
    )


def clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LABELLOOP_") and k not in ("PYTHONPATH", "PYTHONHOME")
    }
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Server:
    """`labelloop serve --no-worker` (this tree's) as a subprocess, with its own settings file."""

    database_url: str
    home: Path
    label_studio_url: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "serve.log"

    def command(self) -> list[str]:
        """What `launch` runs (subclasses serve something else on the same port)."""
        config = self.home / "settings.toml"
        config.write_text(settings_toml(self.database_url, self.port, self.label_studio_url))
        return [sys.executable, "-m", "service", "serve", "--no-worker", "--config", str(config)]

    def launch(self) -> None:
        command = self.command()
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"---- start {self.starts} ----\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_healthy(self, limit: float = START_TIMEOUT) -> float:
        """Seconds until /health answered 200; raises with the log's tail on failure."""
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() - started < limit:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}\n{self.tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{self.url}/health")).status_code == 200:
                        return time.monotonic() - started
                await asyncio.sleep(0.05)
        raise RuntimeError(f"server not healthy after {limit:.0f} s\n{self.tail()}")

    async def start(self) -> float:
        self.launch()
        return await self.wait_healthy()

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no goodbye."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait, 30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"<no log: {exc}>"


# ---------------------------------------------------------------------------------------------
# the drill
# ---------------------------------------------------------------------------------------------


@dataclass
class DrillResult:
    database: str
    events: int
    concurrency: int
    acknowledged_before_kill: int = 0
    failed_in_flight: int = 0  # requests that died with the server (sent again after restart)
    answered_duplicate: int = 0  # resends the log recognised as already stored
    acknowledged: int = 0
    stored: int = 0
    lost: int = 0  # acknowledged, but missing or different in the log
    duplicates: int = 0  # events stored more than once
    unacknowledged: int = 0  # never acknowledged within MAX_ATTEMPTS
    restart_seconds: float = 0.0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicates == 0
            and self.unacknowledged == 0
            and self.acknowledged == self.stored == self.events
            and not self.problems
        )


async def run_drill(
    database_url: str,
    home: Path,
    *,
    events: int = 5000,
    concurrency: int = 32,
    kill_fraction: float = 1 / 3,
    kill_delay: float = 0.0,
    deadline: float = 600.0,
) -> DrillResult:
    """Send ``events`` unique events, SIGKILL the server ``kill_delay`` seconds after
    ``kill_fraction`` of them are acknowledged (a few ms land the kill between a commit and its
    answers), restart it, finish, then audit the log. ``database_url`` must be empty."""
    backend = sa.make_url(database_url).get_backend_name()
    result = DrillResult(backend, events, concurrency)
    run = uuid.uuid4().hex[:12]
    bodies = [event_body(seq, run) for seq in range(events)]
    acked: dict[int, int] = {}  # seq -> event id
    queue: asyncio.Queue[int] = asyncio.Queue()
    for seq in range(events):
        queue.put_nowait(seq)
    up = asyncio.Event()
    kill_at = max(1, int(events * kill_fraction))
    restart: asyncio.Task[None] | None = None

    with silent_port() as ls_url:
        server = Server(database_url, home, ls_url)

        async def kill_and_restart() -> None:
            await asyncio.sleep(kill_delay)  # the clients keep sending meanwhile
            up.clear()  # from here no new request: none burns attempts on a dead server
            result.acknowledged_before_kill = len(acked)
            await server.kill()  # the SIGKILL goes out before this task yields
            result.restart_seconds = await server.start()
            up.set()

        async def client(http: httpx.AsyncClient) -> None:
            nonlocal restart
            headers = {"X-Labelloop-Secret": SECRET, "Content-Type": "application/json"}
            while not queue.empty():
                seq = queue.get_nowait()
                for _attempt in range(MAX_ATTEMPTS):
                    await up.wait()
                    try:
                        answer = await http.post(
                            f"{server.url}/webhook", content=bodies[seq], headers=headers
                        )
                    except httpx.TransportError:
                        result.failed_in_flight += 1
                        continue  # the server is gone: wait until it is back, send again
                    if answer.status_code == 200:
                        body = answer.json()
                        acked[seq] = int(body["event_id"])
                        result.answered_duplicate += bool(body["duplicate"])
                        break
                    if answer.status_code != 503:
                        result.problems.append(f"event {seq}: {answer.status_code} {answer.text}")
                        break
                if restart is None and len(acked) >= kill_at:
                    restart = asyncio.create_task(kill_and_restart())

        started = time.monotonic()
        try:
            await server.start()
            up.set()
            limits = httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            )
            async with (
                asyncio.timeout(deadline),
                httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits) as http,
            ):
                await asyncio.gather(*(client(http) for _ in range(concurrency)))
                if restart is not None:
                    await restart
        finally:
            server.stop()
        result.seconds = time.monotonic() - started
        if restart is None:
            result.problems.append("the server was never killed")
        if server.proc is not None and server.proc.returncode not in (0, -signal.SIGTERM):
            result.problems.append(f"server exited with {server.proc.returncode}")

    audit(database_url, run, bodies, acked, result)
    return result


def audit(
    database_url: str, run: str, bodies: list[bytes], acked: dict[int, int], result: DrillResult
) -> None:
    """Compare what was acknowledged with what the log holds."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, body FROM events")).all()
    finally:
        engine.dispose()
    stored_by_id: dict[int, str] = {}
    seqs: Counter[int] = Counter()
    for event_id, body in rows:
        marker = json.loads(body).get("drill") or {}
        if marker.get("run") == run:
            stored_by_id[int(event_id)] = body
            seqs[int(marker["seq"])] += 1
    result.acknowledged = len(acked)
    result.stored = len(stored_by_id)
    result.duplicates = sum(n - 1 for n in seqs.values() if n > 1)
    result.unacknowledged = len(bodies) - len(acked)
    for seq, event_id in acked.items():
        stored = stored_by_id.get(event_id)
        if stored is None or stored.encode() != bodies[seq]:
            result.lost += 1


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def postgres_admin_url(given: str | None) -> str:
    if given:
        return given
    done = subprocess.run(
        [str(REPO / "scripts" / "postgres-up")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"scripts/postgres-up failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def fresh_postgres(admin_url: str, prefix: str = "labelloop_drill") -> Iterator[str]:
    """A new, empty database on the server of ``admin_url``; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def table(results: list[DrillResult]) -> str:
    lines = [
        "| database | events | clients | acked before kill | died in flight | resent, found stored "
        "| acknowledged | stored | lost | stored twice | restart s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.database} | {r.events} | {r.concurrency} | {r.acknowledged_before_kill} "
            f"| {r.failed_in_flight} | {r.answered_duplicate} | {r.acknowledged} | {r.stored} "
            f"| {r.lost} | {r.duplicates} | {r.restart_seconds:.1f} |"
        )
    return "\n".join(lines)


async def drill(url: str, home: Path, args: argparse.Namespace) -> DrillResult:
    delay = random.uniform(0.0, 0.03)  # the kill lands anywhere in a commit's cycle
    return await run_drill(
        url, home, events=args.events, concurrency=args.concurrency, kill_delay=delay
    )


async def main_async(args: argparse.Namespace) -> int:
    results: list[DrillResult] = []
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix="labelloop-drill-") as tmp:
            home = Path(tmp)
            if kind == "sqlite":
                url = f"sqlite:///{home / 'drill.db'}"
                results.append(await drill(url, home, args))
            else:
                with fresh_postgres(postgres_admin_url(args.postgres_url)) as url:
                    results.append(await drill(url, home, args))
        r = results[-1]
        print(f"{kind}: {r.events} events in {r.seconds:.1f} s; ok={r.ok}", file=sys.stderr)
        for problem in r.problems[:10]:
            print(f"  problem: {problem}", file=sys.stderr)
    print(f"Kill drill, {datetime.date.today().isoformat()} (SIGKILL after 1/3 acknowledged):\n")
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--postgres-url", help="admin URL (default: scripts/postgres-up)")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
