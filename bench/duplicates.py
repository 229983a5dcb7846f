"""Near-duplicates on digits: how many there are, and what grouping them in the split changes.

scikit-learn's 1,797 digits rendered as PNGs (bench/digits.py), embedded once with the service's
backbone (resnet18, ``weights = "none"`` as the other benchmarks: nothing downloaded), then:

  - the nearest neighbour's cosine similarity (standardised embeddings) of every digit;
  - the near-duplicate groups at `service.vision.ranking.NEAR_DUPLICATE`;
  - the held-out accuracy of `train_head` with the split by task id (before issue 16) and by
    near-duplicate group (after), for several label counts;
  - the time `split_ids` takes on 10,000 embeddings (digits repeated with noise);
  - how many of the 200 most uncertain tasks `diversify` moves (a head on the first labels,
    predicting the rest).

Usage: .venv/bin/python bench/duplicates.py [--size 224] [--labels 300 1000 1797]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.digits import digit_pngs
from service.jobs.predictions import EPSILON
from service.vision.backbone import Backbone, BackboneSpec
from service.vision.duplicates import groups, split_ids, standardised_units
from service.vision.head import train_head
from service.vision.images import decode_image, preprocess
from service.vision.ranking import NEAR_DUPLICATE, diversify, uncertainty_scores


def embed(size: int, cache: Path) -> tuple[torch.Tensor, list[str]]:
    pngs, labels = digit_pngs()
    if cache.exists():
        return torch.load(cache), labels
    backbone = Backbone(BackboneSpec("resnet18", "none", size), torch.device("cpu"))
    x = torch.cat(
        [
            backbone.embed([preprocess(decode_image(p), size) for p in pngs[b : b + 64]])
            for b in range(0, len(pngs), 64)
        ]
    )
    torch.save(x, cache)
    return x, labels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--labels", type=int, nargs="+", default=[300, 1000, 1797])
    parser.add_argument("--threshold", type=float, default=NEAR_DUPLICATE)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/labelloop-digits-emb.pt"))
    args = parser.parse_args()
    torch.manual_seed(0)  # the simulated second shots and the 10,000 rows: the same every run
    x, labels = embed(args.size, args.cache)
    ids = list(range(1, len(labels) + 1))  # task ids as Label Studio would number them

    unit = standardised_units(x)
    sims = unit @ unit.T
    sims.fill_diagonal_(-1.0)
    nearest = sims.max(dim=1).values
    quantiles = torch.quantile(nearest, torch.tensor([0.5, 0.9, 0.99, 1.0]))
    print(f"nearest-neighbour cosine: median/p90/p99/max {quantiles.tolist()}")
    for t in (0.9, 0.95, 0.98):
        print(f"  digits with a neighbour above {t}: {int((nearest > t).sum())}")

    for n in args.labels:
        part, y = x[:n], labels[:n]
        split = split_ids(part, ids[:n], args.threshold)
        found = groups(ids[:n], split)
        before = train_head(part, y, ids[:n])
        after = train_head(part, y, ids[:n], split_ids=split)
        assert before.metrics is not None and after.metrics is not None
        same_label = sum(len({y[t - 1] for t in g}) == 1 for g in found)
        print(
            f"{n} labels: {len(found)} groups ({sum(map(len, found))} tasks, {same_label} of "
            f"one label); held-out accuracy by id {before.metrics.accuracy:.3f} "
            f"(n={before.metrics.n_holdout}), by group {after.metrics.accuracy:.3f} "
            f"(n={after.metrics.n_holdout})"
        )

    # A burst camera's data set: every digit twice, the second a near-identical shot.
    for n in args.labels[:2]:
        shots = torch.cat([x[:n], x[:n] * (1 + 0.02 * torch.randn_like(x[:n]))])
        y = labels[:n] * 2
        twice = ids[:n] + [10_000 + t for t in ids[:n]]
        split = split_ids(shots, twice, args.threshold)
        before = train_head(shots, y, twice)
        after = train_head(shots, y, twice, split_ids=split)
        assert before.metrics is not None and after.metrics is not None
        print(
            f"{n} digits twice ({2 * n} labels): {len(groups(twice, split))} groups; held-out "
            f"accuracy by id {before.metrics.accuracy:.3f}, by group {after.metrics.accuracy:.3f}"
        )

    big = torch.cat([x + 0.05 * x.std() * torch.randn_like(x) for _ in range(6)])[:10_000]
    start = time.perf_counter()
    split_ids(big, list(range(len(big))), args.threshold)
    print(f"split_ids on {len(big)} embeddings: {time.perf_counter() - start:.2f} s")

    # Push cost: a retrain with +20 labels, the rest (and a copy of each, a burst) predicted;
    # predictions whose score moves past the push's EPSILON are rewritten.
    n = args.labels[0]
    rest = x[n + 20 :]
    burst = torch.cat([rest, rest * (1 + 0.02 * torch.randn_like(rest))])
    heads = [train_head(x[:m], labels[:m], ids[:m]).head for m in (n, n + 20)]
    for rule in ("least_confidence", "margin", "entropy"):
        for name, pool in (("digits", rest), ("digits twice", burst)):
            plain, diverse = [], []
            for head in heads:
                scores = uncertainty_scores(head.predict_proba(pool), rule)
                start = time.perf_counter()
                moved = diversify(scores, standardised_units(pool, head.mean, head.std))
                took = time.perf_counter() - start
                plain.append(scores)
                diverse.append(moved)
            rewrites = [int(((a - b).abs() > EPSILON).sum()) for a, b in (plain, diverse)]
            print(
                f"{rule}, {name} ({len(pool)} unlabeled): diversify moved "
                f"{int((diverse[1] != plain[1]).sum())} of the 200 most uncertain in "
                f"{took * 1000:.0f} ms; +20 labels rewrites {rewrites[0]} scores plain, "
                f"{rewrites[1]} diverse"
            )


if __name__ == "__main__":
    main()
