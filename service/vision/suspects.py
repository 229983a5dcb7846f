"""Label errors: the annotations the model confidently disagrees with (confident learning).

Out-of-fold probabilities: every labeled task is scored by a head fitted on the other four of
its project's five stable folds (``head.fold_of``, by near-duplicate group as the retrain splits),
so no probability comes from a head that saw the label it judges, or a copy of its picture.
Confident learning (Northcutt, Jiang and Chuang, 2021) then reads them:

- the threshold of class j is t_j, the mean probability of j over the tasks labeled j (the
  class's average self-confidence), so a class the model is unsure of needs less to be claimed;
- a task labeled i counts as class j when p_j >= t_j, j the most probable of the classes over
  their thresholds (the "confident joint"); it is a suspect when that j is not i.

A suspect's ``score`` is 1 - p_i, one minus the out-of-fold probability of the label it was
given (cleanlab's "self-confidence" ranking): in 0..1, higher is more suspicious. Suspects are
listed by it, most suspicious first.

Cost: five fits of the same head as the retrain's, on the same cached embeddings (no image is
read or embedded again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from service.vision.head import FOLDS, _fit, fold_of


@dataclass(frozen=True)
class Suspect:
    index: int  # row in the inputs
    given: str
    predicted: str
    score: float  # 1 - out-of-fold probability of `given`: 0..1, higher is more suspicious


def out_of_fold(
    embeddings: torch.Tensor,
    labels: Sequence[str],
    task_ids: Sequence[int],
    classes: Sequence[str],
    *,
    split_ids: Sequence[int] | None = None,
    max_iter: int = 500,
    seed: int = 0,
) -> torch.Tensor:
    """(N, C) probabilities, columns in ``classes`` order, each row from a head that was not
    trained on that row's fold. A row whose fold could not be predicted (the other folds hold
    fewer than two classes) is NaN. ``split_ids``: the id each row's fold is taken from (its
    near-duplicate group's smallest task id, as the retrain split it), so copies of a picture
    are scored together and cannot vouch for each other's label; default the task id."""
    x = embeddings.detach().to(device="cpu", dtype=torch.float32)
    if x.ndim != 2 or not len(x) == len(labels) == len(task_ids):
        raise ValueError(
            f"need embeddings (N, dim) with N labels and N task ids, got {tuple(x.shape)}, "
            f"{len(labels)} labels and {len(task_ids)} task ids"
        )
    index = {label: c for c, label in enumerate(classes)}
    y = torch.tensor([index[label] for label in labels], dtype=torch.long)
    split = list(task_ids) if split_ids is None else list(split_ids)
    if len(split) != len(task_ids):
        raise ValueError(f"{len(split)} split ids for {len(task_ids)} task ids")
    folds = torch.tensor([fold_of(t) for t in split], dtype=torch.long)
    probs = torch.full((len(x), len(classes)), float("nan"))
    for fold in range(FOLDS):
        held = folds == fold
        if not held.any() or len(set(y[~held].tolist())) < 2:
            continue
        head = _fit(x[~held], y[~held], list(classes), max_iter, seed)
        probs[held] = head.predict_proba(x[held])
    return probs


def confident_thresholds(probs: torch.Tensor, given: torch.Tensor, n_classes: int) -> torch.Tensor:
    """t_j: the mean probability of class j over the rows labeled j (inf for a class no row
    has: nothing can be confidently claimed for it)."""
    thresholds = torch.full((n_classes,), float("inf"))
    for j in range(n_classes):
        rows = given == j
        if rows.any():
            thresholds[j] = probs[rows, j].mean()
    return thresholds


def find_suspects(
    probs: torch.Tensor, labels: Sequence[str], classes: Sequence[str]
) -> list[Suspect]:
    """The rows whose confident class is not their label, most suspicious first (ties: by
    row). Rows with NaN probabilities are never suspects and do not count toward thresholds."""
    if probs.ndim != 2 or probs.shape != (len(labels), len(classes)):
        raise ValueError(f"need probabilities ({len(labels)}, {len(classes)}), got {probs.shape}")
    index = {label: c for c, label in enumerate(classes)}
    given = torch.tensor([index[label] for label in labels], dtype=torch.long)
    known = ~probs.isnan().any(dim=1)
    if not known.any():
        return []
    p, g = probs[known], given[known]
    rows = known.nonzero().flatten()
    thresholds = confident_thresholds(p, g, len(classes))
    over = p >= thresholds  # (n, C): the classes each row is confidently in
    claimed = torch.where(over, p, torch.full_like(p, -1.0)).argmax(dim=1)
    flagged = over.any(dim=1) & (claimed != g)
    found = [
        Suspect(
            index=int(rows[k]),
            given=classes[int(g[k])],
            predicted=classes[int(claimed[k])],
            score=float(1.0 - p[k, g[k]]),
        )
        for k in flagged.nonzero().flatten().tolist()
    ]
    return sorted(found, key=lambda s: (-s.score, s.index))


def suspects(
    embeddings: torch.Tensor,
    labels: Sequence[str],
    task_ids: Sequence[int],
    *,
    split_ids: Sequence[int] | None = None,
    max_iter: int = 500,
    seed: int = 0,
) -> list[Suspect]:
    """Out-of-fold probabilities and confident learning in one call (classes: the distinct
    labels, sorted, as ``train_head`` orders them)."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        return []
    probs = out_of_fold(
        embeddings, labels, task_ids, classes, split_ids=split_ids, max_iter=max_iter, seed=seed
    )
    return find_suspects(probs, labels, classes)
