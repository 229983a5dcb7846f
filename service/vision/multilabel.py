"""Multi-label heads: one-vs-rest logistic regression with a threshold per label.

Each label is its own yes/no question, answered by a sigmoid over one linear layer on the
standardised embeddings (fitted jointly, one column per label, with the same L2 objective as
the single-label head). A label's threshold is the one that maximises its F1 on out-of-fold
probabilities (5 stable folds by task id, each predicted by a head fitted on the others): held-out
data, never the data a probability was fitted on. The reported figures are those out-of-fold
predictions, each fold thresholded with thresholds chosen on the other folds.

The confidence of one task's prediction is the least sure of its labels: a probability at its
label's threshold is 0.5 and the ends are 1 (linear in between on each side), so a low score
means "some label of this image is a toss-up", as a low top-class probability does for the
single-label head.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional

from service.vision.head import FOLDS, MIN_EVALUATED, StandardisedLinear, fit_l2, fold_of


class OvrHead(StandardisedLinear):
    """One logit per label (a sigmoid each), and per-label thresholds."""

    thresholds: torch.Tensor

    def __init__(self, labels: Sequence[str], dim: int) -> None:
        if len(set(labels)) != len(labels) or not labels:
            raise ValueError(f"labels must be distinct names, got {list(labels)}")
        super().__init__(labels, dim)
        self.register_buffer("thresholds", torch.full((len(self.labels),), 0.5))

    def predict_proba(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, L) independent probabilities, columns in `labels` order."""
        return torch.sigmoid(self.logits(embeddings))

    def predict(self, embeddings: torch.Tensor) -> list[tuple[list[str], float]]:
        """Per row: the labels at or above their threshold (in `labels` order), and the
        confidence (``confidence``)."""
        probs = self.predict_proba(embeddings)
        chosen = probs >= self.thresholds
        sure = confidence(probs, self.thresholds)
        return [
            ([label for label, on in zip(self.labels, row, strict=True) if on], float(s))
            for row, s in zip(chosen.tolist(), sure.tolist(), strict=True)
        ]

    def saved(self) -> dict[str, Any]:
        return {"state_dict": self.state_dict(), "labels": self.labels, "dim": self.dim}

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> OvrHead:
        head = cls(saved["labels"], int(saved["dim"]))
        head.load_state_dict(saved["state_dict"])
        return head.eval()

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.saved(), buffer)
        return buffer.getvalue()


def confidence(probs: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(N,) in [0.5, 1]: min over labels of how far each probability is from its threshold,
    0.5 at the threshold, 1 at 0 or 1."""
    if probs.shape[1] == 0:
        return torch.ones(len(probs))
    t = thresholds.clamp(1e-6, 1 - 1e-6)
    above = 0.5 + 0.5 * (probs - t) / (1 - t)
    below = 0.5 + 0.5 * (t - probs) / t
    sure = torch.where(probs >= t, above, below).clamp(0.0, 1.0)
    return sure.min(dim=1).values


def best_thresholds(probs: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per label, the threshold maximising F1 of ``probs >= t`` against boolean ``truth``:
    midway between two neighbouring probabilities; 0.5 for a label with no positive."""
    thresholds = torch.full((probs.shape[1],), 0.5)
    for j in range(probs.shape[1]):
        p, y = probs[:, j], truth[:, j].bool()
        if not y.any():
            continue
        values = torch.unique(p)  # sorted
        candidates = torch.cat([(values[:-1] + values[1:]) / 2, values[:1] / 2, values[-1:]])
        best, best_f1 = 0.5, -1.0
        for t in candidates.tolist():
            f1 = _f1(p >= t, y)
            if f1 > best_f1 + 1e-12 or (
                abs(f1 - best_f1) <= 1e-12 and abs(t - 0.5) < abs(best - 0.5)
            ):
                best, best_f1 = t, f1
        thresholds[j] = best
    return thresholds


def _f1(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    hits = float((predicted & truth).sum())
    guessed, real = float(predicted.sum()), float(truth.sum())
    return 2 * hits / (guessed + real) if guessed + real else 0.0


def multilabel_metrics(
    truth: torch.Tensor, predicted: torch.Tensor, labels: Sequence[str]
) -> dict[str, Any]:
    """Per-label precision/recall/F1/support, micro- and macro-F1, subset accuracy (every
    label of a task right), of boolean (N, L) ``predicted`` against ``truth``."""
    truth, predicted = truth.bool(), predicted.bool()
    per_label: dict[str, dict[str, float]] = {}
    f1s: list[float] = []
    for j, label in enumerate(labels):
        t, p = truth[:, j], predicted[:, j]
        hits, guessed, support = float((t & p).sum()), float(p.sum()), float(t.sum())
        precision = hits / guessed if guessed else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support or guessed:
            f1s.append(f1)
    n = len(truth)
    return {
        "per_label": per_label,
        "micro_f1": _f1(predicted.flatten(), truth.flatten()),
        "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
        "subset_accuracy": float((predicted == truth).all(dim=1).sum()) / n if n else 0.0,
        "n_holdout": n,
    }


@dataclass
class OvrResult:
    head: OvrHead
    metrics: dict[str, Any] | None  # multilabel_metrics + scheme, thresholds; None: too few
    # task id -> labels predicted out of fold (thresholds from the other folds)
    held_out: dict[int, list[str]] = field(default_factory=dict)


def train_ovr(
    embeddings: torch.Tensor,
    answers: Sequence[Sequence[str]],
    task_ids: Sequence[int],
    labels: Sequence[str],
    *,
    max_iter: int = 500,
    seed: int = 0,
) -> OvrResult:
    """A one-vs-rest head on `embeddings` (N, dim), task i tagged with `answers[i]` (a subset
    of `labels`, possibly empty), thresholds and figures from out-of-fold probabilities."""
    x = embeddings.detach().to(device="cpu", dtype=torch.float32)
    if x.ndim != 2 or not len(x) == len(answers) == len(task_ids):
        raise ValueError(f"need (N, dim) embeddings with N answers and ids, got {tuple(x.shape)}")
    index = {label: j for j, label in enumerate(labels)}
    y = torch.zeros(len(x), len(labels))
    for i, tags in enumerate(answers):
        for tag in tags:
            y[i, index[tag]] = 1.0
    folds = torch.tensor([fold_of(t) for t in task_ids], dtype=torch.long)
    oof = torch.full_like(y, float("nan"))
    for fold in range(FOLDS):
        held = folds == fold
        if held.any() and (~held).sum() >= 2:
            oof[held] = _fit(x[~held], y[~held], labels, max_iter, seed).predict_proba(x[held])
    head = _fit(x, y, labels, max_iter, seed)
    scored = ~oof.isnan().any(dim=1)
    if int(scored.sum()) < MIN_EVALUATED:
        return OvrResult(head, None)
    head.thresholds.copy_(best_thresholds(oof[scored], y[scored]))
    predicted = torch.zeros_like(y, dtype=torch.bool)
    for fold in range(FOLDS):
        held, others = (folds == fold) & scored, (folds != fold) & scored
        if held.any():
            thresholds = (
                best_thresholds(oof[others], y[others]) if others.any() else head.thresholds
            )
            predicted[held] = oof[held] >= thresholds
    metrics = multilabel_metrics(y[scored].bool(), predicted[scored], labels)
    metrics.update(
        scheme=f"{FOLDS}-fold", thresholds=dict(zip(labels, head.thresholds.tolist(), strict=True))
    )
    rows = scored.nonzero().flatten().tolist()
    held_out = {
        task_ids[i]: [label for j, label in enumerate(labels) if predicted[i, j]] for i in rows
    }
    return OvrResult(head, metrics, held_out)


def _fit(
    x: torch.Tensor, y: torch.Tensor, labels: Sequence[str], max_iter: int, seed: int
) -> OvrHead:
    """L2-regularised logistic regression per label, positives weighted to balance each label
    (the single-label head's objective, one sigmoid per column)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = OvrHead(labels, x.shape[1])
    positives = y.sum(dim=0)
    pos_weight = ((len(y) - positives) / positives.clamp_min(1)).clamp(0.05, 20.0)

    def data_loss(logits: torch.Tensor) -> torch.Tensor:
        return functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)

    return fit_l2(head, x, data_loss, max_iter)
