"""Ingest under sustained load: webhook throughput and latency, against the stack's ceiling.

For each target — a bare Starlette endpoint that reads the body and answers 200 (the ceiling of
Starlette + uvicorn here, same uvicorn settings as `labelloop serve`), `labelloop serve
--no-worker` on SQLite, and on Postgres (a fresh database) — it runs `wrk --latency` for ~10 s
at 1, 16 and 64 connections, with realistic ~2 KB ANNOTATION_CREATED bodies that differ in
every request (a wrk Lua script puts a counter into the annotation id, the task id and a marker,
so the log's sha256 dedupe never short-circuits), then a fixed rate (default 200 events/s,
three runs: one run's p99 is its twenty slowest requests, which one stall of this VM decides;
wrk cannot pace and wrk2 is not in Debian, so a small open-loop asyncio client here sends on
schedule and measures from the scheduled send time, coordinated omission included).

Prints markdown tables: target, concurrency, events/s, p50, p99, ratio to bare; and the
fixed-rate p99 of each run and their median. Checks the issue's targets: >= 50 % of bare
throughput on SQLite at concurrency 16; p99 (the median of the runs) < 25 ms at 200 events/s.

Usage: .venv/bin/python bench/ingest.py [--seconds 10] [--rate 200] [--paced-runs 3]
           [--concurrency 1,16,64] [--targets bare,sqlite,postgres] [--postgres-url URL]
           [--profile DIR]

Before each point the script waits (bounded) until the folder has folded every event, so each
point starts from the same state; "folded after" is how long folding lagged behind a point.

`--profile DIR` also records the SQLite server with py-spy during its concurrency-16 point.
All traffic goes to 127.0.0.1 servers this script starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.kill_drill import (  # noqa: E402
    SECRET,
    Server,
    event_body,
    fresh_postgres,
    postgres_admin_url,
    silent_port,
)
from storage.db import create_engine  # noqa: E402

CONCURRENCY = (1, 16, 64)
WRK = shutil.which("wrk") or "/usr/bin/wrk"
SENTINEL = 918273645  # stands for the per-request number in the body template
ID_SPAN = 10_000_000  # numbers per wrk run; ids stay below 2**31 (integer columns)


# ---------------------------------------------------------------------------------------------
# the bare endpoint: the ceiling
# ---------------------------------------------------------------------------------------------


def serve_bare(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def webhook(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"ok": True, "event_id": 0, "duplicate": False})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/webhook", webhook, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
    # The very call `labelloop serve` makes (service/__main__.py).
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_config=None)


@dataclass
class BareServer(Server):
    def command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--serve-bare", str(self.port)]


# ---------------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------------

LUA = r"""
local parts = {%(parts)s}
local headers = {["Content-Type"] = "application/json", ["X-Labelloop-Secret"] = %(secret)s}
local threads = 0
local counter = 0
local base = %(base)d

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  base = base + tid * 1000000
end

function request()
  counter = counter + 1
  return wrk.format("POST", "/webhook", headers, table.concat(parts, tostring(base + counter)))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, "write": %%d, ' ..
    '"status": %%d, "timeout": %%d, "p50": %%d, "p90": %%d, "p99": %%d, "max": %%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def lua_string(text: str) -> str:
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def body_template(run: str) -> list[str]:
    """The JSON body split where the per-request number goes."""
    # event_body(seq) uses seq + 1 as annotation and task id, and seq in the marker.
    text = event_body(SENTINEL - 1, run, marker_key="bench").decode()
    text = text.replace(f'"seq": {SENTINEL - 1}', f'"seq": {SENTINEL}')
    assert str(SENTINEL - 1) not in text
    parts = text.split(str(SENTINEL))
    assert len(parts) >= 3, "the number must appear in the annotation, the task and the marker"
    return parts


def wrk_script(path: Path, run: str, base: int) -> Path:
    parts = ", ".join(lua_string(p) for p in body_template(run))
    path.write_text(LUA % {"parts": parts, "secret": json.dumps(SECRET), "base": base})
    return path


@dataclass
class Point:
    target: str
    concurrency: int
    requests: int
    ok: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    stored: int | None = None  # events the point added to the log (a check on wrk's count)
    fold_lag: float = 0.0  # seconds until every event of the point was folded

    @property
    def rate(self) -> float:
        return self.ok / self.seconds


def run_wrk(url: str, connections: int, seconds: float, script: Path, target: str) -> Point:
    threads = 1  # one wrk thread drives this server easily and leaves the CPUs to it
    done = subprocess.run(
        [
            WRK,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            f"{url}/webhook",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    match = re.search(r"^WRKJSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    stats = json.loads(match[1])
    errors = {k: stats[k] for k in ("connect", "read", "write", "status", "timeout") if stats[k]}
    return Point(
        target=target,
        concurrency=connections,
        requests=stats["requests"],
        ok=stats["requests"] - stats["status"],
        seconds=stats["duration_us"] / 1e6,
        p50_ms=stats["p50"] / 1000,
        p90_ms=stats["p90"] / 1000,
        p99_ms=stats["p99"] / 1000,
        max_ms=stats["max"] / 1000,
        errors=errors,
    )


# ---------------------------------------------------------------------------------------------
# the fixed-rate point: an open-loop client on raw asyncio streams
# ---------------------------------------------------------------------------------------------


@dataclass
class Paced:
    target: str
    rate: float
    sent: int
    ok: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)  # of the 200 answers
    errors: int = 0  # non-200 answers, failed connections, timeouts

    def quantile(self, q: float) -> float:
        if len(self.latencies_ms) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies_ms, n=1000, method="inclusive")[
            int(q * 1000) - 1
        ]


async def paced_load(
    port: int, rate: float, seconds: float, run: str, target: str, max_connections: int = 256
) -> Paced:
    """Send ``rate`` events/s for ``seconds`` on schedule; latency from each scheduled time."""
    parts = body_template(run)
    # Connections at rest, with when each was last used: one idle longer than the server's
    # keep-alive timeout (uvicorn: 5 s) may be closed under it, so it is not reused.
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    opened = 0
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    count = int(rate * seconds)
    base = 150 * ID_SPAN

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        nonlocal opened
        while idle:
            reader, writer, used = idle.pop()
            if loop.time() - used < 2.0:
                return reader, writer
            writer.close()
            opened -= 1
        if opened >= max_connections:
            raise RuntimeError("more than max_connections requests in flight")
        opened += 1
        return await asyncio.open_connection("127.0.0.1", port)

    async def one(n: int, scheduled: float) -> None:
        nonlocal errors
        body = "".join(p if i == 0 else str(base + n) + p for i, p in enumerate(parts)).encode()
        head = (
            f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nX-Labelloop-Secret: {SECRET}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            async with asyncio.timeout(10):
                reader, writer = await connection()
                writer.write(head + body)
                await writer.drain()
                status_line = await reader.readuntil(b"\r\n")
                headers = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", headers)
                await reader.readexactly(int(length[1]) if length else 0)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, RuntimeError) as exc:
            errors += 1  # the connection is not reused
            print(f"paced request {n} failed: {exc!r}", file=sys.stderr)
            return
        if status_line.split()[1] == b"200":
            latencies.append((loop.time() - scheduled) * 1000)
        else:
            errors += 1
            print(f"paced request {n} answered {status_line!r}", file=sys.stderr)
        idle.append((reader, writer, loop.time()))

    tasks = []
    start = loop.time() + 0.05
    for n in range(count):
        scheduled = start + n / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    for _, writer, _ in idle:
        writer.close()
    return Paced(target, rate, count, len(latencies), elapsed, latencies, errors)


# ---------------------------------------------------------------------------------------------
# running it
# ---------------------------------------------------------------------------------------------


def count_events(database_url: str, where: str = "") -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            query = f"SELECT count(*) FROM events {where}"
            return int(conn.execute(sa.text(query)).scalar_one())
    finally:
        engine.dispose()


async def drained(database_url: str | None, limit: float = 120.0) -> float:
    """Wait until the folder has folded every event (each point starts from the same state);
    returns the seconds it took. Bounded: gives up after ``limit`` seconds."""
    if not database_url:
        return 0.0
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if await asyncio.to_thread(count_events, database_url, "WHERE NOT folded") == 0:
            break
        await asyncio.sleep(0.2)
    return time.monotonic() - started


@dataclass
class Results:
    points: list[Point] = field(default_factory=list)
    paced: list[Paced] = field(default_factory=list)


async def measure(
    target: str,
    server: Server,
    database_url: str | None,
    args: argparse.Namespace,
    results: Results,
    home: Path,
    point_index: list[int],
) -> None:
    await server.start()
    run = uuid.uuid4().hex[:12]

    def script() -> Path:
        point_index[0] += 1
        path = home / f"wrk-{point_index[0]}.lua"
        return wrk_script(path, run, point_index[0] * ID_SPAN)

    try:
        await asyncio.to_thread(run_wrk, server.url, 16, 2, script(), target)  # warm-up
        for connections in args.concurrency:
            await drained(database_url)
            before = count_events(database_url) if database_url else 0
            profiler = None
            if args.profile and target == "sqlite" and connections == 16:
                profiler = start_profiler(server, Path(args.profile), args.seconds)
            point = await asyncio.to_thread(
                run_wrk, server.url, connections, args.seconds, script(), target
            )
            if profiler is not None:
                finish_profiler(profiler)
            if database_url:
                point.stored = count_events(database_url) - before
                point.fold_lag = await drained(database_url)
            results.points.append(point)
            print(
                f"{target} c={connections}: {point.rate:.0f}/s p50 {point.p50_ms:.1f} "
                f"p99 {point.p99_ms:.1f} ms errors {point.errors} stored {point.stored} "
                f"folded {point.fold_lag:.1f} s after the point",
                file=sys.stderr,
            )
        for attempt in range(args.paced_runs):  # a single run's p99 is twenty requests
            await drained(database_url)
            tag = f"{run}p{attempt}"
            paced = await paced_load(server.port, args.rate, args.seconds, tag, target)
            results.paced.append(paced)
            print(
                f"{target} @{args.rate:g}/s: p50 {paced.quantile(0.5):.1f} "
                f"p99 {paced.quantile(0.99):.1f} ms errors {paced.errors}",
                file=sys.stderr,
            )
    finally:
        server.stop()


def start_profiler(server: Server, folder: Path, seconds: float) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    assert server.proc is not None
    spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [
            str(spy),
            "record",
            "--pid",
            str(server.proc.pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--threads",
            "--idle",
            "--format",
            "raw",
            "--output",
            str(folder / "sqlite-c16.folded"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish_profiler(profiler: subprocess.Popen[bytes]) -> None:
    try:
        profiler.wait(timeout=60)
    except subprocess.TimeoutExpired:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(timeout=30)


def tables(results: Results, rate: float) -> str:
    bare = {p.concurrency: p.rate for p in results.points if p.target == "bare"}
    lines = [
        "| target | concurrency | events/s | p50 ms | p99 ms | ratio to bare | folded after |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in results.points:
        ratio = f"{p.rate / bare[p.concurrency]:.0%}" if bare.get(p.concurrency) else "—"
        errors = f" ({sum(p.errors.values())} errors)" if p.errors else ""
        lag = "—" if p.target == "bare" else f"{p.fold_lag:.1f} s"
        lines.append(
            f"| {p.target} | {p.concurrency} | {p.rate:.0f}{errors} | {p.p50_ms:.1f} "
            f"| {p.p99_ms:.1f} | {ratio} | {lag} |"
        )
    lines += [
        "",
        "| target | fixed rate | runs | achieved events/s | p50 ms | p99 ms (median) "
        "| p99 ms of each run | max ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target, runs in paced_by_target(results).items():
        p99s = [q.quantile(0.99) for q in runs]
        lines.append(
            f"| {target} | {rate:g}/s | {len(runs)} "
            f"| {statistics.median(q.ok / q.seconds for q in runs):.0f} "
            f"| {statistics.median(q.quantile(0.5) for q in runs):.1f} "
            f"| {statistics.median(p99s):.1f} | {' / '.join(f'{p:.1f}' for p in p99s)} "
            f"| {max(max(q.latencies_ms, default=float('nan')) for q in runs):.1f} "
            f"| {sum(q.errors for q in runs)} |"
        )
    return "\n".join(lines)


def paced_by_target(results: Results) -> dict[str, list[Paced]]:
    grouped: dict[str, list[Paced]] = {}
    for q in results.paced:
        grouped.setdefault(q.target, []).append(q)
    return grouped


def verdicts(results: Results) -> list[str]:
    out = []
    by = {(p.target, p.concurrency): p for p in results.points}
    if ("bare", 16) in by and ("sqlite", 16) in by:
        share = by[("sqlite", 16)].rate / by[("bare", 16)].rate
        out.append(
            f"SQLite at concurrency 16 reaches {share:.0%} of bare (target >= 50 %): "
            f"{'met' if share >= 0.5 else 'MISSED'}"
        )
    for target, runs in paced_by_target(results).items():
        if target == "bare":
            continue
        p99 = statistics.median(q.quantile(0.99) for q in runs)
        out.append(
            f"{target} p99 at {runs[0].rate:g} events/s, median of {len(runs)} runs: "
            f"{p99:.1f} ms (target < 25 ms): {'met' if p99 < 25 else 'MISSED'}"
        )
    return out


async def main_async(args: argparse.Namespace) -> int:
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    results = Results()
    point_index = [0]
    with tempfile.TemporaryDirectory(prefix="labelloop-ingest-") as tmp, silent_port() as ls_url:
        home = Path(tmp)
        for target in targets:
            folder = home / target
            folder.mkdir()
            if target == "bare":
                await measure(
                    target, BareServer("", folder, ls_url), None, args, results, home, point_index
                )
            elif target == "sqlite":
                url = f"sqlite:///{folder / 'bench.db'}"
                server = Server(url, folder, ls_url)
                await measure(target, server, url, args, results, home, point_index)
            elif target == "postgres":
                with fresh_postgres(
                    postgres_admin_url(args.postgres_url), "labelloop_bench"
                ) as url:
                    server = Server(url, folder, ls_url)
                    await measure(target, server, url, args, results, home, point_index)
            else:
                raise SystemExit(f"unknown target {target!r}")
    load = os.getloadavg()
    print(
        f"Ingest, {datetime.date.today().isoformat()}, wrk {args.seconds:g} s per point, "
        f"~{len(event_body(0, 'x'))} B bodies; {os.cpu_count()} CPUs, "
        f"load average after the run {load[0]:.2f}:\n"
    )
    print(tables(results, args.rate))
    print()
    for line in verdicts(results):
        print(f"- {line}")
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-bare":
        serve_bare(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument(
        "--paced-runs", type=int, default=3, help="fixed-rate runs per target (median p99)"
    )
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(c) for c in text.split(",")],
        default=list(CONCURRENCY),
        help="wrk connections per point, comma-separated (default 1,16,64)",
    )
    parser.add_argument("--targets", default="bare,sqlite,postgres")
    parser.add_argument("--postgres-url", help="admin URL (default: scripts/postgres-up)")
    parser.add_argument("--profile", help="folder for py-spy's record of SQLite at c=16")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
