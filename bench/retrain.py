"""Retrain cost: the seed recipe (full fine-tune) against labelloop's cached-embedding retrain.

Real data offline: scikit-learn's digits (1,797 handwritten 8x8 digits) rendered as PNGs, served
by the in-memory fake Label Studio, stored in a real SQLite database, trained with real torch.
weights = "none" (no downloads here), 224 px, resnet18.

  (a) seed recipe: ResNet18 full fine-tune, SGD lr 0.001 momentum 0.9, StepLR(7, 0.1), batch 32,
      25 epochs. One epoch is timed and multiplied by 25 (said so in the table); its accuracy
      is measured after that single epoch.
  (b) labelloop cold: nothing cached; N labels plus 200 unlabeled tasks; train + push.
  (c) labelloop incremental: 100 new labeled images on top of (b); train + push.
Also the bare forward rate of the backbone in the same run, against the embedding stage's.

`--device cuda` runs all of it on a GPU (the service's `training.device`); the default is the CPU.

Usage: .venv/bin/python bench/retrain.py [--labels 300 1000] [--threads 2] [--device cpu]
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.digits import digit_pngs
from service.context import open_services
from service.jobs.worker import Worker
from service.settings import (
    DatabaseSettings,
    LabelStudioSettings,
    Settings,
    TrainingSettings,
)
from service.vision.backbone import Backbone, BackboneSpec, build_resnet, resolve_device
from service.vision.head import holdout_mask
from service.vision.images import decode_image, preprocess
from storage import jobs, models
from storage.migrate import upgrade
from tests.fake_labelstudio import TOKEN, FakeLabelStudio, annotate

SIZE = 224
UNLABELED = 200
NEW = 100
SEED_EPOCHS = 25


def bare_forward_rate(device: torch.device, count: int = 128) -> float:
    backbone = Backbone(BackboneSpec("resnet18", "none", SIZE), device)
    batch = [torch.randn(3, SIZE, SIZE) for _ in range(count)]
    backbone.embed(batch[:32])  # warm-up
    start = time.perf_counter()
    backbone.embed(batch)  # returns CPU tensors: the device has finished
    return count / (time.perf_counter() - start)


def seed_recipe(
    pngs: list[bytes], labels: list[str], ids: list[int], device: torch.device
) -> tuple[float, float, int]:
    """One timed epoch of the seed recipe on the train part; (seconds/epoch, accuracy, n)."""
    held = holdout_mask(ids)
    classes = sorted(set(labels))
    x = torch.stack([preprocess(decode_image(p), SIZE) for p in pngs]).to(device)
    y = torch.tensor([classes.index(label) for label in labels]).to(device)
    train = [i for i, h in enumerate(held) if not h]
    test = [i for i, h in enumerate(held) if h]
    model = build_resnet(BackboneSpec("resnet18", "none", SIZE))
    model.fc = torch.nn.Linear(model.fc.in_features, len(classes))
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    model.train()
    start = time.perf_counter()
    order = torch.randperm(len(train)).tolist()
    for b in range(0, len(order), 32):
        rows = [train[i] for i in order[b : b + 32]]
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[rows]), y[rows])
        loss.backward()
        optimizer.step()
    scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    epoch = time.perf_counter() - start
    model.eval()
    with torch.inference_mode():
        predicted = torch.cat(
            [model(x[test[b : b + 64]]).argmax(1) for b in range(0, len(test), 64)]
        )
    return epoch, float((predicted == y[test]).float().mean()), len(train)


async def labelloop_runs(
    pngs: list[bytes], labels: list[str], n: int, threads: int, device: str
) -> dict[str, Any]:
    fake = FakeLabelStudio()
    total = n + UNLABELED
    for task_id in range(1, total + 1):
        fake.add_task(task_id, pngs[task_id - 1])
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        settings = Settings(
            database=DatabaseSettings(url=url),
            label_studio=LabelStudioSettings(url="http://ls.test", api_key=TOKEN),
            training=TrainingSettings(
                threshold=10**6, weights="none", image_size=SIZE, device=device
            ),
        )
        async with open_services(settings, transport=fake.transport()) as services:
            worker = Worker(services)
            torch.set_num_threads(threads)
            stamp = "2026-11-29T10:00:00Z"
            annotate(services, *[(t, t, labels[t - 1], stamp) for t in range(1, n + 1)])
            cold = await timed_manual_run(services, worker)
            # 100 new images arrive and get labeled.
            for task_id in range(total + 1, total + NEW + 1):
                fake.add_task(task_id, pngs[task_id - 1])
            annotate(
                services,
                *[(t, t, labels[t - 1], stamp) for t in range(total + 1, total + NEW + 1)],
            )
            incremental = await timed_manual_run(services, worker)
            with services.engine.begin() as conn:
                versions = [models.get(conn, 1, f"labelloop-v{i}") for i in (1, 2)]
    return {
        "cold": cold,
        "incremental": incremental,
        "accuracy": [v.metrics["accuracy"] if v and v.metrics else None for v in versions],
        "scheme": [v.metrics["scheme"] if v and v.metrics else None for v in versions],
        "promotion": [v.promotion if v else None for v in versions],
    }


async def timed_manual_run(services: Any, worker: Worker) -> dict[str, Any]:
    with services.engine.begin() as conn:
        jobs.enqueue(conn, 1, "manual")
    start = time.perf_counter()
    await worker.run_until_idle()
    seconds = time.perf_counter() - start
    with services.engine.begin() as conn:
        job = jobs.recent(conn, 1)[0]
    assert job.status == "succeeded", (job.status, job.error)
    return {"seconds": seconds, **job.progress}


def pushed(run: dict[str, Any], promotion: str | None) -> str:
    """What a run pushed; a version the promotion gate kept back pushes nothing."""
    if "pushed" in run:
        return f"{run['pushed']} pushed"
    return str(promotion)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help='"cpu", "cuda", "cuda:N" or "auto"')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    pngs, labels = digit_pngs()
    print(
        f"torch {torch.__version__}, {args.threads} threads, {device}, "
        f"resnet18 weights=none {SIZE}px"
    )
    rate = bare_forward_rate(device)
    print(f"bare forward pass: {rate:.1f} images/s")
    rows = []
    for n in args.labels:
        ids = list(range(1, n + 1))
        epoch, seed_acc, n_train = seed_recipe(pngs[:n], labels[:n], ids, device)
        seed_total = epoch * SEED_EPOCHS
        runs = asyncio.run(labelloop_runs(pngs, labels, n, args.threads, args.device))
        cold, inc = runs["cold"], runs["incremental"]
        cold_images = cold["images"]["forward_passes"]
        rows.append(
            f"| {n} | seed recipe, 25 epochs (1 timed x 25) | {seed_total:.0f} s "
            f"| {n_train / epoch:.1f} | {seed_acc:.3f} after 1 epoch | 1x |"
        )
        rows.append(
            f"| {n} | labelloop cold ({cold_images} images embedded, "
            f"{pushed(cold, runs['promotion'][0])}) "
            f"| {cold['seconds']:.1f} s | {cold_images / cold['seconds']:.1f} "
            f"| {runs['accuracy'][0]:.3f} ({runs['scheme'][0]}) "
            f"| {seed_total / cold['seconds']:.0f}x |"
        )
        rows.append(
            f"| {n} | labelloop incremental (+{NEW} labels, "
            f"{inc['images']['forward_passes']} embedded, {pushed(inc, runs['promotion'][1])}) "
            f"| {inc['seconds']:.1f} s | {inc['images']['forward_passes'] / inc['seconds']:.1f} "
            f"| {runs['accuracy'][1]:.3f} ({runs['scheme'][1]}) "
            f"| {seed_total / inc['seconds']:.0f}x |"
        )
        print(rows[-3:], flush=True)
    print("\n| labels | run | wall time | images/s | held-out accuracy | seed/labelloop |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
