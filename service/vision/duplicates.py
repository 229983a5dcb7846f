"""Near-duplicates: images whose embeddings point the same way, grouped.

Two tasks are near-duplicates when the cosine similarity of their embeddings, standardised as
the head sees them (minus the labelled embeddings' mean, over their standard deviation), is
above a threshold. Raw ResNet embeddings come out of a ReLU and an average pool, so every pair
of them has a high cosine; standardised, unrelated images sit near 0 and only near-copies
(burst shots, video frames, the same scan twice) come close to 1.

`split_ids` groups them (connected components of the graph joining each image to its most
similar later ones above the threshold: a chain of near-copies is one group) and gives
every task the smallest task id of its group, so the held-out split (``service.vision.head``),
which buckets tasks by id, keeps a group on one side: the held-out accuracy is not inflated by
scoring a model on near-copies of what it was trained on. The similarity matrix is computed in
chunks of rows against the rows after them, so 10,000 tasks need ~40 MB at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CHUNK = 1024
# Each row is joined to at most this many of its most similar later rows: a group of thousands
# of near-identical frames costs N x 16 joins, not N^2 / 2 (still one group: every member
# joins a later one, up to the last).
NEIGHBOURS = 16


def standardised_units(
    x: torch.Tensor, mean: torch.Tensor | None = None, std: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows of ``x`` standardised (by ``mean``/``std``, else their own) at unit length."""
    x = x.detach().to(device="cpu", dtype=torch.float32)
    mean = x.mean(dim=0) if mean is None else mean.to(torch.float32)
    std = x.std(dim=0, correction=0).clamp_min(1e-6) if std is None else std.to(torch.float32)
    z = (x - mean) / std
    unit: torch.Tensor = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit


def split_ids(embeddings: torch.Tensor, task_ids: Sequence[int], threshold: float) -> list[int]:
    """For each row, the smallest task id of its near-duplicate group (itself when alone).
    A ``threshold`` of 1 or more groups nothing."""
    if embeddings.ndim != 2 or len(embeddings) != len(task_ids):
        raise ValueError(
            f"need embeddings (N, dim) and N task ids, got {tuple(embeddings.shape)} and "
            f"{len(task_ids)} task ids"
        )
    n = len(task_ids)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1 and threshold < 1.0:
        unit = standardised_units(embeddings)
        for start in range(0, n, CHUNK):
            block = unit[start : start + CHUNK] @ unit[start:].T  # this chunk against later rows
            block.triu_(diagonal=1).masked_fill_(block == 0, -1.0)  # each pair once, i < j
            k = min(NEIGHBOURS, block.shape[1])
            similar, later = block.topk(k, dim=1)
            rows, ranks = (similar > threshold).nonzero(as_tuple=True)
            cols = later[rows, ranks]
            for i, j in zip((rows + start).tolist(), (cols + start).tolist(), strict=True):
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    smallest: dict[int, int] = {}
    for i, task_id in enumerate(task_ids):
        r = root(i)
        smallest[r] = min(smallest.get(r, task_id), task_id)
    return [smallest[root(i)] for i in range(n)]


def groups(task_ids: Sequence[int], split: Sequence[int]) -> list[list[int]]:
    """The groups of more than one task, as sorted lists of task ids (for reports)."""
    by_rep: dict[int, list[int]] = {}
    for task_id, rep in zip(task_ids, split, strict=True):
        by_rep.setdefault(rep, []).append(task_id)
    return sorted(sorted(g) for g in by_rep.values() if len(g) > 1)
