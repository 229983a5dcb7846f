"""Several Choices on one image: one head per Choices tag, all on the same embeddings.

A single-choice tag gets the single-label ``Head`` (service/vision/head.py, trained exactly as in
a one-Choices project, on the tasks that answer it); a multiple-choice tag gets a one-vs-rest
``OvrHead`` (service/vision/multilabel.py). ``MultiHead`` predicts every tag of an image at once:
``{tag: [choices]}`` and one score, the least confident tag's (low = look at it first).

Labels here are plain ``{tag name: [choices]}`` dicts; the jobs encode them for storage.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from service.vision.head import Head, train_head
from service.vision.metrics import Metrics
from service.vision.multilabel import OvrHead, train_ovr

Answer = dict[str, list[str]]  # Choices name -> the choices picked (one for a single-choice tag)
KIND = "targets"


@dataclass(frozen=True)
class TargetSpec:
    name: str  # the Choices tag's name
    choices: tuple[str, ...]
    multiple: bool


class MultiHead(nn.Module):
    """One head per target; predicts all of them."""

    def __init__(self, specs: Sequence[TargetSpec], heads: Sequence[Head | OvrHead]) -> None:
        super().__init__()
        if len(specs) != len(heads) or not specs:
            raise ValueError("one head per target, at least one")
        self.specs = list(specs)
        self.members = list(heads)  # typed; `heads` registers them as submodules
        self.heads = nn.ModuleList(heads)
        self.dim = heads[0].dim

    @property
    def labels(self) -> list[str]:
        """Every class some head can predict, as "tag: choice" (the version's label set)."""
        return [
            f"{s.name}: {c}"
            for s, h in zip(self.specs, self.members, strict=True)
            for c in h.labels
        ]

    def predict(self, embeddings: torch.Tensor) -> list[tuple[Answer, float]]:
        """Per row: every target's prediction, and the least confident target's score."""
        x = embeddings.to(torch.float32)
        answers: list[Answer] = [{} for _ in range(len(x))]
        scores = torch.ones(len(x))
        for spec, head in zip(self.specs, self.members, strict=True):
            if isinstance(head, OvrHead):
                for i, (tags, sure) in enumerate(head.predict(x)):
                    answers[i][spec.name] = tags
                    scores[i] = min(float(scores[i]), sure)
            else:
                assert isinstance(head, Head)
                probs = head.predict_proba(x)
                top, index = probs.max(dim=1)
                for i, c in enumerate(index.tolist()):
                    answers[i][spec.name] = [head.labels[c]]
                scores = torch.minimum(scores, top)
        return [(a, float(s)) for a, s in zip(answers, scores.tolist(), strict=True)]

    def to_bytes(self) -> bytes:
        saved = {
            "kind": KIND,
            "specs": [[s.name, list(s.choices), s.multiple] for s in self.specs],
            "heads": [
                h.saved()
                if isinstance(h, OvrHead)
                else {"state_dict": h.state_dict(), "labels": h.labels, "dim": h.dim}
                for h in self.members
            ],
        }
        buffer = io.BytesIO()
        torch.save(saved, buffer)
        return buffer.getvalue()


def load_model(data: bytes) -> Head | MultiHead:
    """A stored version's head: a ``Head`` (one single-choice Choices) or a ``MultiHead``."""
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"not a serialised head: {exc}") from exc
    if not isinstance(saved, dict) or saved.get("kind") != KIND:
        return Head.from_bytes(data)
    try:
        specs = [TargetSpec(str(n), tuple(c), bool(m)) for n, c, m in saved["specs"]]
        heads: list[Head | OvrHead] = []
        for spec, one in zip(specs, saved["heads"], strict=True):
            if spec.multiple:
                heads.append(OvrHead.from_saved(one))
            else:
                head = Head(one["labels"], int(one["dim"]))
                head.load_state_dict(one["state_dict"])
                heads.append(head.eval())
    except Exception as exc:
        raise ValueError(f"not a serialised MultiHead: {exc}") from exc
    return MultiHead(specs, heads).eval()


@dataclass
class MultiResult:
    head: MultiHead
    metrics: Metrics | None
    held_out: dict[int, Answer] = field(default_factory=dict)  # predicted by heads not fit on it


class TargetError(ValueError):
    """A target that cannot be trained yet (too few labels or classes): the job says which."""


def train_targets(
    embeddings: torch.Tensor,
    answers: Sequence[Answer],
    task_ids: Sequence[int],
    specs: Sequence[TargetSpec],
) -> MultiResult:
    """A head per target on the tasks that answer it (every task answers a multiple-choice
    target: nothing ticked is a negative for each label), and the project's figures."""
    heads: list[Head | OvrHead] = []
    per_target: dict[str, dict[str, Any]] = {}
    held: dict[str, dict[int, list[str]]] = {}
    for spec in specs:
        rows = [i for i, a in enumerate(answers) if spec.name in a]
        ids = [task_ids[i] for i in rows]
        x = embeddings[rows] if rows else embeddings[:0]
        if spec.multiple:
            if len(rows) < 2:
                raise TargetError(f'<Choices name="{spec.name}"> needs at least 2 labeled tasks')
            ovr = train_ovr(x, [answers[i][spec.name] for i in rows], ids, spec.choices)
            heads.append(ovr.head)
            held[spec.name] = ovr.held_out
            if ovr.metrics is not None:
                per_target[spec.name] = {"multiple": True, **ovr.metrics}
            continue
        y = [answers[i][spec.name][0] for i in rows]
        if len(set(y)) < 2:
            raise TargetError(f'<Choices name="{spec.name}"> needs labels of at least two classes')
        single = train_head(x, y, ids)
        heads.append(single.head)
        held[spec.name] = {t: [label] for t, label in single.held_out.items()}
        if single.metrics is not None:
            per_target[spec.name] = {"multiple": False, **single.metrics.to_dict()}
    head = MultiHead(specs, heads)
    held_out = _together(answers, task_ids, specs, held)
    metrics = _metrics(specs, per_target, answers, task_ids, held_out) if per_target else None
    return MultiResult(head, metrics, held_out)


def _together(
    answers: Sequence[Answer],
    task_ids: Sequence[int],
    specs: Sequence[TargetSpec],
    held: dict[str, dict[int, list[str]]],
) -> dict[int, Answer]:
    """Tasks held out by every target they answer: their predictions on those targets."""
    together: dict[int, Answer] = {}
    for task, answer in zip(task_ids, answers, strict=True):
        names = [s.name for s in specs if s.name in answer]
        if names and all(task in held[n] for n in names):
            together[task] = {n: held[n][task] for n in names}
    return together


def _metrics(
    specs: Sequence[TargetSpec],
    per_target: dict[str, dict[str, Any]],
    answers: Sequence[Answer],
    task_ids: Sequence[int],
    held_out: dict[int, Answer],
) -> Metrics:
    """The project's figures: ``accuracy`` is subset accuracy (every tag of an image right, on
    the tasks every head held out), ``macro_f1`` the mean of the tags' macro-F1, ``per_class``
    "tag: choice" rows, and ``targets`` each tag's own figures."""
    truth = dict(zip(task_ids, answers, strict=True))
    right = sum(
        all(sorted(predicted[n]) == sorted(truth[t][n]) for n in predicted)
        for t, predicted in held_out.items()
    )
    per_class: dict[str, dict[str, float]] = {}
    for spec in specs:
        figures = per_target.get(spec.name, {})
        for choice, row in (figures.get("per_label") or figures.get("per_class") or {}).items():
            per_class[f"{spec.name}: {choice}"] = row
    schemes = {str(m.get("scheme")) for m in per_target.values()}
    return Metrics(
        accuracy=right / len(held_out) if held_out else 0.0,
        macro_f1=sum(float(m["macro_f1"]) for m in per_target.values()) / len(per_target),
        n_train=len(task_ids),
        n_holdout=len(held_out),
        per_class=per_class,
        confusion=[],
        labels=list(per_class),
        scheme=schemes.pop() if len(schemes) == 1 else "mixed",
        targets=per_target,
    )
