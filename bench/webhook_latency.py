"""Webhook answer time of a real `labelloop serve` (what an annotator's submit waits for).

Starts labelloop on a fresh database, posts realistic ANNOTATION_CREATED bodies (~2 KB, the
project object included) and prints p50/p90/p99 and throughput, sequentially and with
concurrent clients. Usage: .venv/bin/python bench/webhook_latency.py [--database-url URL]
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import payloads

SECRET = "bench-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def body(i: int) -> bytes:
    event = payloads.annotation_event(i, 1_000_000 + i, "red" if i % 2 else "blue")
    event["project"]["description"] = "x" * 900  # Label Studio sends the whole project object
    return json.dumps(event).encode()


async def run(url: str, count: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    queue = iter(range(count))
    headers = {"X-Labelloop-Secret": SECRET, "Content-Type": "application/json"}

    async def client(http: httpx.AsyncClient) -> None:
        for i in queue:
            payload = body(i + concurrency * 1_000_000)
            start = time.perf_counter()
            answer = await http.post(url, content=payload, headers=headers)
            latencies.append(time.perf_counter() - start)
            answer.raise_for_status()

    async with httpx.AsyncClient(timeout=10) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url")
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {
            **os.environ,
            "LABELLOOP_DATABASE__URL": args.database_url or f"sqlite:///{tmp}/bench.db",
            "LABELLOOP_SERVER__PORT": str(port),
            "LABELLOOP_WEBHOOK__SECRET": SECRET,
            "LABELLOOP_TRAINING__THRESHOLD": "1000000",
            "LABELLOOP_CONFIG": str(Path(__file__).resolve().parent.parent / "settings.toml"),
        }
        labelloop = Path(sys.executable).parent / "labelloop"
        with open(Path(tmp) / "serve.log", "wb") as log:
            server = subprocess.Popen([labelloop, "serve"], env=env, stdout=log, stderr=log)
            try:
                base = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.2)
                else:
                    raise SystemExit("labelloop did not start")
                print(f"database: {env['LABELLOOP_DATABASE__URL'].split('://')[0]}")
                print("| clients | events | events/s | p50 ms | p90 ms | p99 ms |")
                print("|---|---|---|---|---|---|")
                for concurrency in (1, 16):
                    start = time.perf_counter()
                    lat = asyncio.run(run(f"{base}/webhook", args.count, concurrency))
                    elapsed = time.perf_counter() - start
                    q = statistics.quantiles([x * 1000 for x in lat], n=100)
                    print(
                        f"| {concurrency} | {len(lat)} | {len(lat) / elapsed:.0f} "
                        f"| {q[49]:.1f} | {q[89]:.1f} | {q[98]:.1f} |"
                    )
            finally:
                server.terminate()
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
