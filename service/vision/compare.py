"""Two heads on the same held-out tasks: which is better, and by more than chance?

The promotion gate asks this of a new head and the active one. Comparing their own figures
compares unlike things (different held-out tasks; or an old head scored on tasks it was fitted
on), so both are scored on the new version's held-out tasks, each by a head that was not trained
on them: the new version's own held-out predictions (`TrainResult.held_out`), and the old
version's recipe (its labels as they were) refit once per held-out fold without that fold
(`refit_predictions`). `paired` then measures the macro-F1 of both on those tasks and how much
of their difference is noise: the standard error of the difference over bootstrap resamples of
the tasks (the same resample for both heads: a paired comparison), which shrinks as the number
of held-out tasks grows. One image changing sides among 50 is noise; a head that learned
nothing is not.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from service.vision.head import _fit, fold_of

Z = 1.645  # one-sided 95%: a shortfall larger than Z standard errors is unlikely to be chance
RESAMPLES = 1000


@dataclass(frozen=True)
class Paired:
    n: int  # held-out tasks both heads were scored on
    new_f1: float
    old_f1: float
    noise: float  # Z times the bootstrap standard error of new_f1 - old_f1

    @property
    def difference(self) -> float:
        return self.new_f1 - self.old_f1


def refit_predictions(
    train_x: torch.Tensor,
    train_labels: Sequence[str],
    train_ids: Sequence[int],
    test_x: torch.Tensor,
    test_ids: Sequence[int],
    classes: Sequence[str],
    *,
    max_iter: int = 500,
    seed: int = 0,
    split: Mapping[int, int] | None = None,
) -> dict[int, str]:
    """The head recipe on (train_x, train_labels), refit for each fold the test tasks fall in
    on the training tasks outside that fold, predicting the test tasks in it: task id -> label.

    A fold whose training part has fewer than two classes predicts nothing (as in
    `train_head`'s cross-validation), so its tasks are missing from the answer. ``split``:
    task id -> the id it is split by (its near-duplicate group's), as `train_head` split them.
    """
    classes = list(classes)
    index = {label: c for c, label in enumerate(classes)}
    y = torch.tensor([index[label] for label in train_labels], dtype=torch.long)
    by = split or {}
    train_folds = torch.tensor([fold_of(by.get(t, t)) for t in train_ids], dtype=torch.long)
    test_folds = [fold_of(by.get(t, t)) for t in test_ids]
    x = train_x.detach().to(device="cpu", dtype=torch.float32)
    predicted: dict[int, str] = {}
    for fold in sorted(set(test_folds)):
        kept = train_folds != fold
        if len(set(y[kept].tolist())) < 2:
            continue
        head = _fit(x[kept], y[kept], classes, max_iter, seed)
        rows = [i for i, f in enumerate(test_folds) if f == fold]
        guesses = head.predict_proba(test_x[rows].to(torch.float32)).argmax(dim=1).tolist()
        predicted.update((test_ids[i], classes[g]) for i, g in zip(rows, guesses, strict=True))
    return predicted


def paired(
    true: Sequence[str],
    new: Sequence[str],
    old: Sequence[str],
    classes: Sequence[str],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Paired:
    """Macro-F1 of `new` and `old` predictions of the same tasks, and the noise of their
    difference (deterministic: the resamples come from a seeded generator)."""
    if not len(true) == len(new) == len(old):
        raise ValueError(f"{len(true)} labels, {len(new)} and {len(old)} predictions")
    if not true:
        raise ValueError("no task to compare on")
    index = {label: c for c, label in enumerate(classes)}
    t = torch.tensor([index[label] for label in true])
    n = torch.tensor([index[label] for label in new])
    o = torch.tensor([index[label] for label in old])
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(t), (resamples, len(t)), generator=generator)
    new_f1 = _macro_f1(t[None], n[None], len(classes))
    old_f1 = _macro_f1(t[None], o[None], len(classes))
    differences = _macro_f1(t[draws], n[draws], len(classes)) - _macro_f1(
        t[draws], o[draws], len(classes)
    )
    return Paired(
        n=len(t),
        new_f1=float(new_f1[0]),
        old_f1=float(old_f1[0]),
        noise=Z * float(differences.std(correction=1)) if resamples > 1 else 0.0,
    )


def _macro_f1(true: torch.Tensor, predicted: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Macro-F1 of each row of (R, N) class indices, as `compute_metrics` computes it: the
    mean F1 of the classes that occur among the true or the predicted labels."""
    rows = true.shape[0]
    cells = torch.arange(rows)[:, None] * n_classes * n_classes + true * n_classes + predicted
    confusion = torch.bincount(cells.flatten(), minlength=rows * n_classes * n_classes)
    confusion = confusion.reshape(rows, n_classes, n_classes).to(torch.float64)
    hits = confusion.diagonal(dim1=1, dim2=2)
    support = confusion.sum(dim=2)
    guessed = confusion.sum(dim=1)
    f1 = torch.where(support + guessed > 0, 2 * hits / (support + guessed).clamp_min(1), 0.0)
    present = (support + guessed > 0).to(torch.float64)
    return (f1 * present).sum(dim=1) / present.sum(dim=1).clamp_min(1)
