"""Webhook answer time while the worker trains, against idle (the annotator must not notice).

Starts `labelloop serve` (worker in-process, the default) against a fake Label Studio on
loopback holding scikit-learn's digits as PNGs, labels them through webhooks, then measures
sequential webhook answers idle and during a 224 px training. Usage:
  .venv/bin/python bench/ingest_during_training.py [--tasks 800] [--posts 400]
"""

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.digits import digit_pngs  # noqa: E402
from tests import payloads  # noqa: E402
from tests.fake_labelstudio import TOKEN, FakeLabelStudio  # noqa: E402
from tests.fake_ls_server import FakeLabelStudioServer  # noqa: E402

SECRET, API = "bench-secret", "bench-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(client: httpx.Client, posts: int, offset: int) -> list[float]:
    """Sequential webhook answers (ms) for unique bodies of a project labelloop knows."""
    times = []
    for i in range(posts):
        body = payloads.annotation_event(10**6 + offset + i, 10**6 + offset + i, "0")
        start = time.perf_counter()
        answer = client.post("/webhook", json=body, headers={"X-Labelloop-Secret": SECRET})
        times.append((time.perf_counter() - start) * 1000)
        answer.raise_for_status()
    return times


def row(name: str, times: list[float]) -> str:
    q = statistics.quantiles(times, n=100)
    return f"| {name} | {len(times)} | {q[49]:.1f} | {q[89]:.1f} | {q[98]:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=800)
    parser.add_argument("--posts", type=int, default=400)
    args = parser.parse_args()
    pngs, labels = digit_pngs(args.tasks)
    fake = FakeLabelStudio()
    fake.label_config = payloads.LABEL_CONFIG.replace(
        '<Choice value="red"/><Choice value="blue"/>',
        "".join(f'<Choice value="{d}"/>' for d in range(10)),
    )
    for task_id, png in enumerate(pngs, start=1):
        fake.add_task(task_id, png)
    with FakeLabelStudioServer(fake).running() as ls, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = Path(tmp) / "settings.toml"
        config.write_text(
            f'[server]\nport = {port}\napi_token = "{API}"\n'
            f'[database]\nurl = "sqlite:///{tmp}/bench.db"\n'
            f'[label_studio]\nurl = "{ls.url}"\napi_key = "{TOKEN}"\ncatch_up = ""\n'
            f'[webhook]\nsecret = "{SECRET}"\n'
            '[training]\nthreshold = 1000000\nweights = "none"\ndevice = "cpu"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABELLOOP_")}
        with open(Path(tmp) / "serve.log", "wb") as log:
            server = subprocess.Popen(
                [str(Path(sys.executable).parent / "labelloop"), "serve", "--config", str(config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                run(port, args, labels)
            finally:
                server.terminate()
                server.wait(timeout=30)


def run(port: int, args: argparse.Namespace, labels: list[str]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("labelloop did not start")
            time.sleep(0.2)
        stamp = "2026-11-29T10:00:00Z"
        for task_id, label in enumerate(labels, start=1):
            body = payloads.annotation_event(task_id, task_id, label, updated_at=stamp)
            body["project"]["label_config"] = payloads.LABEL_CONFIG
            client.post("/webhook", json=body, headers={"X-Labelloop-Secret": SECRET})
        idle = measure(client, args.posts, 0)
        auth = {"Authorization": f"Bearer {API}"}
        job_id = client.post("/projects/1/train", headers=auth).json()["job_id"]

        def job() -> dict[str, object]:
            jobs = client.get("/projects/1", headers=auth).json()["jobs"]
            return next(j for j in jobs if j["id"] == job_id)

        while job()["status"] == "queued":
            time.sleep(0.1)
        busy = measure(client, args.posts, 10**5)
        still_running = job()["status"] == "running"
        while job()["status"] in ("queued", "running"):
            time.sleep(0.5)
        print(json.dumps(job(), indent=1)[:600])
        print(f"\ntraining still running when the measurement ended: {still_running}")
        print("| webhook answers | posts | p50 ms | p90 ms | p99 ms |")
        print("|---|---|---|---|---|")
        print(row("idle", idle))
        print(row("during a training", busy))


if __name__ == "__main__":
    main()
