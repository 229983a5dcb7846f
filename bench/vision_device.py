"""Training and inference of `service/vision` on one device: speed, and agreement with the CPU.

On real data offline (scikit-learn's 1,797 handwritten digits, rendered to 64 px PNGs and
preprocessed like any task image), with `weights = "none"`, it times on `--device`:

  - embedding (the frozen backbone's forward, what the default "head" training and every
    prediction run) at the batch size the service uses, images/s;
  - the head trained on those embeddings, and its held-out accuracy;
  - full fine-tuning (`training.mode = "finetune"`), images/s and held-out accuracy;
  - and, off the CPU, how far the device's embeddings are from the CPU's for the same images.

`--autocast` runs the same code under `torch.autocast(bfloat16)`, which the service does not
do (embeddings would change, and they are cached by backbone identity): it measures what
mixed precision would be worth on that device.

It needs only torch, torchvision, Pillow and scikit-learn (no database, no Label Studio), so it
runs as is on a GPU machine that has those. Prints one markdown table.

Usage: python bench/vision_device.py [--device auto] [--images 1797] [--epochs 2]
           [--finetune-images 1000] [--cpu-check 64] [--size 224] [--batch 32] [--autocast]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.digits import digit_pngs
from service.vision.backbone import Backbone, BackboneSpec, resolve_device
from service.vision.finetune import finetune
from service.vision.head import train_head
from service.vision.images import decode_image, preprocess

T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[[], T], autocast: bool) -> tuple[T, float]:
    synchronize(device)
    started = time.perf_counter()
    precision = (
        torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    )
    with precision:
        result = work()
    synchronize(device)
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help='"auto", "cpu", "cuda" or "cuda:N"')
    parser.add_argument("--images", type=int, default=1797)
    parser.add_argument("--finetune-images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cpu-check", type=int, default=64, help="images compared with the CPU")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--autocast", action="store_true", help="bfloat16 mixed precision")
    args = parser.parse_args()

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"torch {torch.__version__}, device {device} ({name or 'cpu'})", flush=True)
    pngs, labels = digit_pngs(args.images)
    images = [preprocess(decode_image(png), args.size) for png in pngs]
    task_ids = list(range(1, len(images) + 1))
    spec = BackboneSpec("resnet18", "none", args.size)
    rows: list[tuple[str, str]] = []

    backbone = Backbone(spec, device, batch_size=args.batch)
    # warm-up: kernels chosen, memory allocated
    timed(device, lambda: backbone.embed(images[: args.batch * 2]), args.autocast)
    embeddings, seconds = timed(device, lambda: backbone.embed(images), args.autocast)
    rows.append(("embed (forward), images/s", f"{len(images) / seconds:.0f}"))
    print(f"embedded {len(images)} in {seconds:.2f} s", flush=True)

    trained, seconds = timed(device, lambda: train_head(embeddings, labels, task_ids), False)
    accuracy = trained.metrics.accuracy if trained.metrics else float("nan")
    rows.append(
        ("head on the embeddings: s / held-out accuracy", f"{seconds:.2f} / {accuracy:.3f}")
    )

    if device.type != "cpu" and args.cpu_check:
        sample = images[: args.cpu_check]
        on_cpu = Backbone(spec, torch.device("cpu"), batch_size=args.batch).embed(sample)
        here = embeddings[: len(sample)]
        relative = ((here - on_cpu).abs().max() / on_cpu.abs().max()).item()
        cosine = torch.nn.functional.cosine_similarity(here, on_cpu, dim=1).min().item()
        rows.append(("embeddings vs CPU: max relative difference", f"{relative:.2e}"))
        rows.append(("embeddings vs CPU: lowest cosine similarity", f"{cosine:.6f}"))

    count = min(args.finetune_images, len(images))
    result, seconds = timed(
        device,
        lambda: finetune(
            spec,
            images[:count],
            labels[:count],
            task_ids[:count],
            device=device,
            epochs=args.epochs,
            batch_size=args.batch,
        ),
        args.autocast,
    )
    trained_on = result.metrics.n_train if result.metrics else count
    accuracy = result.metrics.accuracy if result.metrics else float("nan")
    rows.append(
        (
            f"fine-tune ({count} images, {args.epochs} epochs): images/s / held-out accuracy",
            f"{trained_on * args.epochs / seconds:.0f} / {accuracy:.3f}",
        )
    )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        rows.append(("peak device memory, GiB", f"{peak:.2f}"))

    precision = "bf16 autocast" if args.autocast else "fp32"
    title = f"{device} ({name or 'cpu'}), resnet18, {args.size} px, batch {args.batch}, {precision}"
    print(f"\n| {title} | |")
    print("|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
