"""Label errors found: digits with a share of annotations flipped at random, then the suspects.

scikit-learn's 1,797 digits; ``--flip`` of the labels (5% by default) are replaced by another
digit chosen at random (seeded). The suspects are what the service computes after a head
retrain (``service.vision.suspects``: out-of-fold probabilities over the five stable folds,
confident learning). Reported per seed: how many were flagged, and precision and recall of the
top 2 x (flipped) suspects (fewer when fewer were flagged): precision = flipped among them /
their number, recall = flipped among them / flipped. Also the suspects step's time beside the
retrain's own head fit (``train_head``) on the same features, one CPU thread.

Features (``--features``):
  pixels      the raw 8x8 digits (64 values): what a good embedding does for photos, honestly;
  embeddings  resnet18 at 64 px with ``weights = "none"`` (random init, the only weights this
              offline machine has), the service's embedding stage: weak features, shown to say
              what the method cannot do without a useful backbone.

Usage: .venv/bin/python bench/suspects.py [--features pixels embeddings] [--seeds 0 1 2 3 4]
"""

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.vision.head import train_head
from service.vision.suspects import suspects

DIGITS = "0123456789"


def pixel_features() -> tuple[torch.Tensor, list[str]]:
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    data = load_digits()
    return torch.tensor(data.data, dtype=torch.float32), [str(t) for t in data.target]


def embedding_features(size: int = 64) -> tuple[torch.Tensor, list[str]]:
    from bench.digits import digit_pngs
    from service.vision.backbone import Backbone, BackboneSpec
    from service.vision.images import decode_image, preprocess

    pngs, labels = digit_pngs()
    backbone = Backbone(BackboneSpec("resnet18", "none", size), torch.device("cpu"))
    inputs = [preprocess(decode_image(png), size) for png in pngs]
    return backbone.embed(inputs), labels


def flip(labels: list[str], share: float, seed: int) -> tuple[list[str], set[int]]:
    rng = random.Random(seed)
    flipped = set(rng.sample(range(len(labels)), round(share * len(labels))))
    noisy = [
        rng.choice([d for d in DIGITS if d != label]) if i in flipped else label
        for i, label in enumerate(labels)
    ]
    return noisy, flipped


def run(name: str, x: torch.Tensor, truth: list[str], share: float, seeds: list[int]) -> None:
    task_ids = list(range(1, len(truth) + 1))
    precisions, recalls = [], []
    print(f"\n{name}: {len(truth)} digits, {x.shape[1]} features, {share:.0%} flipped")
    print("| seed | flipped | flagged | top k | flipped in top k | precision | recall |")
    print("|---|---|---|---|---|---|---|")
    for seed in seeds:
        noisy, flipped = flip(truth, share, seed)
        started = time.perf_counter()
        found = suspects(x, noisy, task_ids)
        suspect_s = time.perf_counter() - started
        top = found[: 2 * len(flipped)]
        hits = sum(1 for s in top if s.index in flipped)
        precision = hits / len(top) if top else 0.0
        recall = hits / len(flipped)
        precisions.append(precision)
        recalls.append(recall)
        started = time.perf_counter()
        trained = train_head(x, noisy, task_ids)
        train_s = time.perf_counter() - started
        accuracy = trained.metrics.accuracy if trained.metrics else float("nan")
        print(
            f"| {seed} | {len(flipped)} | {len(found)} | {len(top)} | {hits} | "
            f"{precision:.3f} | {recall:.3f} |"
            f"  (suspects {suspect_s:.1f} s, train_head {train_s:.1f} s, "
            f"held-out accuracy on noisy labels {accuracy:.3f})"
        )
    print(
        f"mean precision {statistics.mean(precisions):.3f} "
        f"(min {min(precisions):.3f}), mean recall {statistics.mean(recalls):.3f} "
        f"(min {min(recalls):.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", nargs="+", default=["pixels"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for features in args.features:
        if features == "pixels":
            x, truth = pixel_features()
        elif features == "embeddings":
            x, truth = embedding_features()
        else:
            parser.error(f"unknown features {features!r}")
        run(features, x, truth, args.flip, args.seeds)


if __name__ == "__main__":
    main()
