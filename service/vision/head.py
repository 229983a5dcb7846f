"""The fast training mode: a linear classifier head trained on frozen embeddings.

`train_head` splits the labelled tasks with `holdout_mask` (stable per task id, so a task stays
on the same side of the split in every run), fits standardisation + a linear layer on the train
part, and measures it on the held-out part. Everything here runs on the CPU in milliseconds to
seconds: the expensive part, the embeddings, is computed (and cached) elsewhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.nn import functional

from service.vision.metrics import Metrics, compute_metrics

L2_C = 1.0  # inverse L2 strength, as scikit-learn's C
FOLDS = 5  # fold 0 (a stable fifth of the tasks, by id) is the held-out part
KFOLD_BELOW = 100  # with fewer labels every fold takes a turn as held-out (cross-validation)
MIN_EVALUATED = 10  # below this many labels no figure would mean anything: metrics are None


def holdout_mask(task_ids: Sequence[int], fraction: float = 0.2) -> list[bool]:
    """True for the tasks held out for evaluation: about `fraction` of them.

    The bucket of a task depends only on its id (sha256, not Python's salted `hash()`), so the
    split is the same across calls, processes and versions, and grows stably with the data.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    threshold = round(fraction * 1000)
    return [_bucket(task_id) < threshold for task_id in task_ids]


def fold_of(task_id: int) -> int:
    """The task's fold in 0..FOLDS-1, fixed by its id: fold 0 is `holdout_mask(.., 0.2)`."""
    return _bucket(task_id) * FOLDS // 1000


def _bucket(task_id: int) -> int:
    return int(hashlib.sha256(str(task_id).encode()).hexdigest()[:8], 16) % 1000


class StandardisedLinear(nn.Module):
    """Standardisation (train mean/std, stored as buffers) and one linear layer, a column per
    label: what the softmax head here and the one-vs-rest head (``multilabel.py``) share."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, labels: Sequence[str], dim: int) -> None:
        super().__init__()
        self.labels = list(labels)
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.linear = nn.Linear(dim, len(self.labels))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits (N, labels) of embeddings (N, dim)."""
        result: torch.Tensor = self.linear((embeddings - self.mean) / self.std)
        return result

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``forward`` of (N, dim) embeddings of any float type, checked, in inference mode."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"expected embeddings (N, {self.dim}), got {tuple(embeddings.shape)}")
        with torch.inference_mode():
            return self.forward(embeddings.to(torch.float32))


H = TypeVar("H", bound=StandardisedLinear)


class Head(StandardisedLinear):
    """A softmax over the labels, with a temperature that calibrates it (fitted on held-out
    predictions; 1 when there are none)."""

    temperature: torch.Tensor

    def __init__(self, labels: Sequence[str], dim: int) -> None:
        if len(set(labels)) != len(labels) or len(labels) < 2:
            raise ValueError(f"labels must be at least two distinct names, got {list(labels)}")
        super().__init__(labels, dim)
        self.register_buffer("temperature", torch.ones(()))

    def predict_proba(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, C) softmax probabilities, columns in `labels` order."""
        logits = self.logits(embeddings)
        with torch.inference_mode():
            calibrated = logits / self.temperature
        return torch.softmax(calibrated, dim=1)  # outside inference mode: an ordinary tensor

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {"state_dict": self.state_dict(), "labels": self.labels, "dim": self.dim}, buffer
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Head:
        try:
            saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            head = cls(saved["labels"], int(saved["dim"]))
            state = saved["state_dict"]
            state.setdefault("temperature", torch.ones(()))
            head.load_state_dict(state)
        except Exception as exc:  # any unpickling or shape problem means "not a head"
            raise ValueError(f"not a serialised Head: {exc}") from exc
        return head.eval()


@dataclass
class TrainResult:
    head: Head
    metrics: Metrics | None  # None when there were too few labels to hold some out
    # task id -> the label predicted for it by a head not trained on it (fold 0 with a
    # holdout, every fold with cross-validation): what `metrics` counts, for the gate
    held_out: dict[int, str] = dataclasses.field(default_factory=dict)


def train_head(
    embeddings: torch.Tensor,
    labels: Sequence[str],
    task_ids: Sequence[int],
    *,
    holdout_fraction: float = 0.2,
    max_iter: int = 500,
    seed: int = 0,
    split_ids: Sequence[int] | None = None,
) -> TrainResult:
    """Train a head on `embeddings` (N, dim) labelled `labels`, one task id per row.

    Classes are the distinct labels sorted alphabetically. When the held-out part is empty or
    the train part lacks a class, the head is trained on everything and `metrics` is None.
    ``split_ids``: the id each row is split by (its near-duplicate group's smallest task id,
    `service.vision.duplicates.split_ids`), so a group stays on one side; default the task id.
    """
    x = embeddings.detach().to(device="cpu", dtype=torch.float32).clone()
    if x.ndim != 2 or not len(x) == len(labels) == len(task_ids):
        raise ValueError(
            f"need embeddings (N, dim) with N labels and N task ids, got {tuple(x.shape)}, "
            f"{len(labels)} labels and {len(task_ids)} task ids"
        )
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"need at least two classes, got {len(classes)}: {classes}")
    index = {label: c for c, label in enumerate(classes)}
    y = torch.tensor([index[label] for label in labels], dtype=torch.long)
    split = list(task_ids) if split_ids is None else list(split_ids)
    if len(split) != len(task_ids):
        raise ValueError(f"{len(split)} split ids for {len(task_ids)} task ids")
    if len(y) < KFOLD_BELOW:
        return _cross_validated(x, y, classes, task_ids, split, max_iter, seed)
    mask = holdout_mask(split, holdout_fraction)
    held = [i for i, out in enumerate(mask) if out]
    kept = [i for i, out in enumerate(mask) if not out]
    if not held or len(set(y[kept].tolist())) < len(classes):
        return _cross_validated(x, y, classes, task_ids, split, max_iter, seed)
    head = _fit(x[kept], y[kept], classes, max_iter, seed)
    head.temperature.fill_(fit_temperature(_logits(head, x[held]), y[held]))
    metrics = evaluate(head, x[held], [labels[i] for i in held], n_train=len(kept))
    predicted = head.predict_proba(x[held]).argmax(dim=1).tolist()
    held_out = {task_ids[i]: classes[p] for i, p in zip(held, predicted, strict=True)}
    return TrainResult(head=head, metrics=metrics, held_out=held_out)


def _cross_validated(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: list[str],
    task_ids: Sequence[int],
    split: Sequence[int],
    max_iter: int,
    seed: int,
) -> TrainResult:
    """Few labels: each stable fold is predicted by a head fitted on the others; the pooled
    predictions are the metrics, and the returned head is fitted on everything."""
    folds = torch.tensor([fold_of(t) for t in split])
    true: list[int] = []
    predicted: list[int] = []
    logits: list[torch.Tensor] = []
    held_out: dict[int, str] = {}
    for fold in range(FOLDS):
        held = folds == fold
        if not held.any() or len(set(y[~held].tolist())) < 2:
            continue
        head = _fit(x[~held], y[~held], classes, max_iter, seed)
        true += y[held].tolist()
        logits.append(_logits(head, x[held]))
        predicted += logits[-1].argmax(dim=1).tolist()
        rows = held.nonzero().flatten().tolist()
        for i, p in zip(rows, logits[-1].argmax(dim=1).tolist(), strict=True):
            held_out[task_ids[i]] = classes[p]
    head = _fit(x, y, classes, max_iter, seed)
    if len(true) < max(MIN_EVALUATED, len(classes)):
        return TrainResult(head=head, metrics=None)  # too few labels to say anything
    # Out-of-fold logits calibrate the head fitted on everything (a close stand-in for it).
    head.temperature.fill_(fit_temperature(torch.cat(logits), torch.tensor(true)))
    metrics = compute_metrics(true, predicted, classes, n_train=len(y))
    metrics.scheme = f"{FOLDS}-fold"
    return TrainResult(head=head, metrics=metrics, held_out=held_out)


def evaluate(
    head: Head, embeddings: torch.Tensor, labels: Sequence[str], *, n_train: int = 0
) -> Metrics:
    """Metrics of `head` on labelled embeddings; every label must be one of `head.labels`."""
    index = {label: c for c, label in enumerate(head.labels)}
    unknown = sorted(set(labels) - index.keys())
    if unknown:
        raise ValueError(f"labels unknown to the head: {unknown}")
    if len(labels) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    if len(labels) == 0:
        predicted: list[int] = []
    else:
        predicted = head.predict_proba(embeddings).argmax(dim=1).tolist()
    true = [index[label] for label in labels]
    return compute_metrics(true, predicted, head.labels, n_train=n_train)


def _logits(head: Head, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():  # not inference_mode: these logits feed the temperature's autograd
        return head.forward(x)


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Temperature scaling (Guo et al., 2017): the T > 0 minimising the held-out negative
    log-likelihood of softmax(logits / T). It changes no prediction, only how sure they are,
    so a low score really means "likely wrong" and Label Studio's sort surfaces those tasks."""
    if len(y) < 2:
        return 1.0
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], max_iter=100, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = functional.cross_entropy(logits / log_t.exp(), y)
        torch.autograd.backward(loss)
        return loss

    with torch.enable_grad():
        optimizer.step(objective)  # type: ignore[no-untyped-call]
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def _fit(x: torch.Tensor, y: torch.Tensor, classes: list[str], max_iter: int, seed: int) -> Head:
    """L2-regularised multinomial logistic regression on standardised embeddings.

    The objective is scikit-learn's LogisticRegression(C) with balanced class weights:
    mean weighted cross entropy + ||W||^2 / (2 C n). Full-batch L-BFGS converges in tens of
    iterations on cached embeddings, needs no learning rate or early stopping, and the L2
    term keeps probabilities honest when labels are few (no 0/1 scores from six examples).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = Head(classes, x.shape[1])
    counts = torch.bincount(y, minlength=len(classes)).to(torch.float32)
    weight = torch.where(counts > 0, len(y) / (len(classes) * counts.clamp_min(1)), 0.0)

    def data_loss(logits: torch.Tensor) -> torch.Tensor:
        return functional.cross_entropy(logits, y, weight=weight)

    return fit_l2(head, x, data_loss, max_iter)


def fit_l2(
    head: H, x: torch.Tensor, data_loss: Callable[[torch.Tensor], torch.Tensor], max_iter: int
) -> H:
    """Standardise ``head`` on ``x``, then fit its layer by full-batch L-BFGS on
    ``data_loss(logits) + ||W||^2 / (2 C n)``: the objective both heads share (softmax here,
    one sigmoid per label in ``multilabel.py``), each with its own data loss."""
    head.mean.copy_(x.mean(dim=0))
    head.std.copy_(x.std(dim=0, correction=0).clamp_min(1e-6))
    penalty = 1.0 / (2.0 * L2_C * len(x))
    optimizer = torch.optim.LBFGS(
        head.linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = data_loss(head.forward(x)) + penalty * head.linear.weight.pow(2).sum()
        torch.autograd.backward(loss)
        return loss

    with torch.enable_grad():
        optimizer.step(objective)  # type: ignore[no-untyped-call]
    return head.eval()
