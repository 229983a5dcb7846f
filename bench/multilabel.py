"""Held-out figures of several Choices and multiple choice on real digits.

scikit-learn's 1,797 digits as PNGs, embedded once with labelloop's backbone (resnet18,
weights = "none": nothing is downloaded here, so the figures are a floor), then trained as the
worker trains them (service/vision/multitarget.py):

  multi-label: one multiple-choice Choices, tags even / at least five / has a loop (0, 6, 8, 9);
  two Choices: parity (odd / even) and size (small 0-4 / large 5-9), single choice each.

Figures: out-of-fold (5 stable folds by task id), thresholds chosen on the other folds.

Usage: .venv/bin/python bench/multilabel.py [--labels 300 1000] [--size 224] [--threads 2]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.digits import digit_pngs
from service.vision.backbone import Backbone, BackboneSpec
from service.vision.images import model_input
from service.vision.multitarget import TargetSpec, train_targets

TAGS = ("even", "at least five", "has a loop")


def tags_of(digit: int) -> list[str]:
    return [
        tag
        for tag, on in zip(TAGS, (digit % 2 == 0, digit >= 5, digit in (0, 6, 8, 9)), strict=True)
        if on
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    count = max(args.labels)
    pngs, digits = digit_pngs(count)
    start = time.perf_counter()
    backbone = Backbone(BackboneSpec("resnet18", "none", args.size), torch.device("cpu"))
    x = backbone.embed([model_input(png, args.size) for png in pngs])
    print(f"embedded {count} digits at {args.size} px in {time.perf_counter() - start:.1f} s")
    ids = list(range(1, count + 1))
    multi = [TargetSpec("tags", TAGS, True)]
    two = [
        TargetSpec("parity", ("odd", "even"), False),
        TargetSpec("size", ("small", "large"), False),
    ]
    print("| labels | config | micro-F1 | macro-F1 | subset accuracy | per tag | train s |")
    print("|---|---|---|---|---|---|---|")
    for n in args.labels:
        d = [int(v) for v in digits[:n]]
        for name, specs, answers in (
            ("multi-label tags", multi, [{"tags": tags_of(v)} for v in d]),
            (
                "two Choices",
                two,
                [
                    {
                        "parity": ["even" if v % 2 == 0 else "odd"],
                        "size": ["large" if v >= 5 else "small"],
                    }
                    for v in d
                ],
            ),
        ):
            start = time.perf_counter()
            result = train_targets(x[:n], answers, ids[:n], specs)
            seconds = time.perf_counter() - start
            m = result.metrics
            assert m is not None and m.targets is not None
            if name == "two Choices":  # single-choice tags: micro-F1 is accuracy
                micro = sum(t["accuracy"] for t in m.targets.values()) / len(m.targets)
                tags = ", ".join(f"{k} acc {t['accuracy']:.3f}" for k, t in m.targets.items())
            else:
                micro = m.targets["tags"]["micro_f1"]
                tags = ", ".join(
                    f"{k} F1 {v['f1']:.3f}" for k, v in m.targets["tags"]["per_label"].items()
                )
            print(
                f"| {n} | {name} | {micro:.3f} | {m.macro_f1:.3f} | {m.accuracy:.3f} | {tags} "
                f"| {seconds:.1f} |"
            )


if __name__ == "__main__":
    main()
