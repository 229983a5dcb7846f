"""Camera photos through the embedding stage, against the bare forward pass in the same run.

Real photographs offline (bench/camera.py): scikit-learn's two sample photos as random crops,
some flipped, colour-jittered, upscaled to 12 MP (3000 x 4000, JPEG quality 90), and `--big`
more at 48 MP (6000 x 8000). They are made in another process (its memory is not this one's
peak RSS), written to a temporary folder and served by a local HTTP server as Label Studio
serves uploads (`/data/upload/...`, with the API key). Then:

  - the embedding stage, `Embedder.embed_tasks` with a real SQLite database and a real
    engine (resnet18, weights "none", 224 px, nothing cached): download, hash, cache lookup,
    reduced-scale decode, preprocess, forward pass, cache write;
  - the bare forward pass on ready 224 px tensors (batch 32, channels_last) with the same
    torch threads (`thread_plan`: what the stage gives the forward pass), and with all cores;
  - per image, serially on one thread: decode + preprocess of a 12 MP photo (CPU time), and
    the forward pass (wall time at the stage's torch threads), to say what limits the ratio.

Prints one markdown table: images/s of both, the ratio, and the peak RSS of this process.
It needs torch, torchvision, Pillow, scikit-learn, httpx and SQLAlchemy (the service's venv).

Usage: .venv/bin/python bench/photos.py [--count 120] [--big 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.context import open_services
from service.jobs.embedding import Embedder
from service.jobs.memory import tune_malloc
from service.settings import DatabaseSettings, LabelStudioSettings, Settings, TrainingSettings
from service.vision.backbone import (
    Backbone,
    BackboneSpec,
    available_cores,
    resolve_device,
    thread_plan,
)
from service.vision.decoder import torch_threads
from service.vision.images import model_input
from storage import labels
from storage.migrate import upgrade

SIZE = 224
BATCH = 32
TOKEN = "bench-token"


def make_photos(folder: Path, count: int, big: int) -> list[Path]:
    """Made by bench/camera.py in a process of its own (its peak RSS is not this one's)."""
    command = [sys.executable, str(Path(__file__).with_name("camera.py"))]
    subprocess.run([*command, str(folder), str(count), str(big)], check=True, timeout=1800)
    return sorted(folder.glob("photo-*.jpg"), key=lambda path: int(path.stem.split("-")[1]))


class _Uploads(http.server.BaseHTTPRequestHandler):
    folder: Path

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        path = self.folder / name
        if TOKEN not in (self.headers.get("Authorization") or "") or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def serve(folder: Path) -> http.server.ThreadingHTTPServer:
    handler = type("Uploads", (_Uploads,), {"folder": folder})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    """This process's resident memory now (Linux), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Stage:
    rate: float  # images/s
    cpu_ms: float  # CPU of this process (all threads, the local server's too) per image
    forward_passes: int
    rss_before_mb: float  # torch, the model, the database: before the first image


async def embedding_stage(
    folder: Path, paths: list[Path], spec: BackboneSpec, device: str, url: str
) -> Stage:
    database = f"sqlite:///{folder / 'bench.db'}"
    upgrade(database)
    settings = Settings(
        database=DatabaseSettings(url=database),
        label_studio=LabelStudioSettings(url=url, api_key=TOKEN),
        training=TrainingSettings(weights="none", image_size=SIZE, device=device),
    )
    async with open_services(settings) as services:
        rows = [
            {"id": index + 1, "data": {"image": f"/data/upload/1/{path.name}"}}
            for index, path in enumerate(paths)
        ]
        with services.engine.begin() as conn:
            labels.save_tasks(conn, 1, rows)
            tasks = [labels.get_task(conn, index + 1) for index in range(len(paths))]
        embedder = Embedder(services)
        embedder.backbone(spec, device)  # built before the clock starts, as in a warm worker
        before = rss_mb()
        cpu = cpu_seconds()
        started = time.perf_counter()
        report = await embedder.embed_tasks(
            tasks,
            "image",
            spec,
            device,
            lambda done, total: None,
            max_pixels=settings.training.max_image_pixels,
        )
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu
    if report.failed:
        raise SystemExit(f"{report.failed} photos failed to embed")
    return Stage(len(paths) / seconds, cpu * 1000 / len(paths), report.forward_passes, before)


def bare_forward(
    spec: BackboneSpec, device: torch.device, count: int, threads: int
) -> tuple[float, float]:
    """images/s, and ms of this process's CPU per image."""
    with torch_threads(threads):
        backbone = Backbone(spec, device, batch_size=BATCH)
        images = [torch.randn(3, SIZE, SIZE) for _ in range(count)]
        backbone.embed(images[: BATCH * 2])  # warm-up: kernels chosen, memory allocated
        cpu = cpu_seconds()
        started = time.perf_counter()
        backbone.embed(images)  # CPU tensors back: the device has finished
        seconds = time.perf_counter() - started
        return count / seconds, (cpu_seconds() - cpu) * 1000 / count


def per_image_costs(
    paths: list[Path], spec: BackboneSpec, device: torch.device, threads: int
) -> tuple[float, float]:
    """ms of CPU to decode + preprocess one 12 MP photo; ms of wall per image forwarded."""
    photos = [path.read_bytes() for path in paths[-8:]]  # 12 MP ones
    model_input(photos[0], SIZE)
    started = time.thread_time()
    tensors = [model_input(data, SIZE) for data in photos]
    decode_ms = (time.thread_time() - started) * 1000 / len(photos)
    with torch_threads(threads):
        backbone = Backbone(spec, device, batch_size=BATCH)
        batch = (tensors * (BATCH // len(tensors) + 1))[:BATCH]
        backbone.embed(batch)
        started = time.perf_counter()
        backbone.embed(batch)
        forward_ms = (time.perf_counter() - started) * 1000 / BATCH
    return decode_ms, forward_ms


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=120, help="12 MP photos")
    parser.add_argument("--big", type=int, default=2, help="48 MP photos, besides --count")
    parser.add_argument("--device", default="cpu", help='"cpu", "cuda" or "cuda:N"')
    parser.add_argument(
        "--default-malloc", action="store_true", help="skip tune_malloc (as serve calls it)"
    )
    args = parser.parse_args()
    if not args.default_malloc:
        tune_malloc()

    device = resolve_device(args.device)
    plan = thread_plan(device)
    spec = BackboneSpec("resnet18", "none", SIZE)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    cores = available_cores()
    print(
        f"torch {torch.__version__}, device {device} ({name or 'cpu'}), {cores} cores: "
        f"{plan.torch} torch threads, {plan.decode} decoders",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="labelloop-photos-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        paths = make_photos(folder, args.count, args.big)
        megabytes = sum(path.stat().st_size for path in paths) / 2**20
        print(
            f"made {len(paths)} photos ({megabytes:.0f} MB) "
            f"in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        server = serve(folder)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            stage = asyncio.run(embedding_stage(folder, paths, spec, args.device, url))
        finally:
            server.shutdown()
        rss = peak_rss_mb()
        print(f"embedding stage: {stage.rate:.1f} images/s", flush=True)
        bare, bare_cpu_ms = bare_forward(spec, device, max(len(paths), BATCH * 4), plan.torch)
        every, _ = bare_forward(spec, device, max(len(paths), BATCH * 4), cores)
        decode_ms, forward_ms = per_image_costs(paths, spec, device, plan.torch)

    title = (
        f"{len(paths)} photos ({args.count} at 12 MP, {args.big} at 48 MP), {device} "
        f"({name or 'cpu'}), {cores} cores, resnet18, {SIZE} px, batch {BATCH}"
    )
    rows = [
        ("embedding stage (download, hash, decode, forward, store), images/s", f"{stage.rate:.1f}"),
        (
            f"bare forward, ready 224 px tensors, {plan.torch} torch threads, images/s",
            f"{bare:.1f}",
        ),
        ("ratio", f"{stage.rate / bare:.2f}x"),
        (f"bare forward with all {cores} cores, images/s", f"{every:.1f}"),
        ("decode + preprocess of one 12 MP photo, ms of CPU", f"{decode_ms:.1f}"),
        (f"forward of one image at {plan.torch} threads, ms", f"{forward_ms:.1f}"),
        (
            "CPU per image: stage (all threads) / bare forward, ms",
            f"{stage.cpu_ms:.0f} / {bare_cpu_ms:.0f}",
        ),
        (
            "RSS before the stage (torch, model, database) / peak RSS, MB",
            f"{stage.rss_before_mb:.0f} / {rss:.0f}",
        ),
    ]
    print(f"\n| {title} | |")
    print("|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
