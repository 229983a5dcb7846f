"""How a classifier did on held-out tasks: accuracy, macro-F1, per-class figures, confusion.

Plain data and plain Python: the head, the fine-tune and the promotion gate all measure with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Metrics:
    """Held-out evaluation of a head; plain data, JSON-able through `to_dict()`."""

    accuracy: float
    macro_f1: float
    n_train: int
    n_holdout: int
    per_class: dict[str, dict[str, float]]  # label -> precision, recall, f1, support
    confusion: list[list[int]]  # rows: true label, columns: predicted, in `labels` order
    labels: list[str]
    scheme: str = "holdout"  # "holdout" (fold 0) or "5-fold" cross-validation
    # several Choices or multiple choice (service/vision/multitarget.py): each tag's own figures;
    # then `accuracy` is subset accuracy and `per_class` is keyed "tag: choice"
    targets: dict[str, dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["targets"] is None:  # a one-Choices project's figures, as they always were
            del data["targets"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metrics:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def compute_metrics(
    true: Sequence[int], predicted: Sequence[int], labels: Sequence[str], *, n_train: int = 0
) -> Metrics:
    """Metrics of class indices `predicted` against `true`, both indexing `labels`.

    The macro F1 averages the classes that occur in `true` or `predicted`, like scikit-learn.
    """
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} true labels but {len(predicted)} predictions")
    n_classes = len(labels)
    confusion = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(true, predicted, strict=True):
        confusion[t][p] += 1
    per_class: dict[str, dict[str, float]] = {}
    present_f1: list[float] = []
    for c, label in enumerate(labels):
        hits = confusion[c][c]
        support = sum(confusion[c])
        predicted_count = sum(row[c] for row in confusion)
        precision = hits / predicted_count if predicted_count else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": float(support),
        }
        if support or predicted_count:
            present_f1.append(f1)
    total = len(true)
    correct = sum(confusion[c][c] for c in range(n_classes))
    return Metrics(
        accuracy=correct / total if total else 0.0,
        macro_f1=sum(present_f1) / len(present_f1) if present_f1 else 0.0,
        n_train=n_train,
        n_holdout=total,
        per_class=per_class,
        confusion=confusion,
        labels=list(labels),
    )
