"""Task order: the score pushed with each prediction, low = look at it first.

Label Studio sorts tasks by a prediction's ``score``; labelloop makes that score an uncertainty
rank, so sorting ascending puts the tasks worth labelling next at the top. Three rules, each a
map of softmax probabilities (N, C) to [0, 1]:

- ``least_confidence``: p1, the top class's probability (the score before issue 16);
- ``margin`` (the default): p1 - p2, how far the runner-up is behind; 0 when two classes tie,
  the classic "between two answers" task;
- ``entropy``: 1 - H(p) / log C, low when the probability is spread over many classes.

`diversify` then re-ranks the most uncertain tasks so near-duplicates (cosine similarity of
their embeddings above a threshold) do not crowd the top: walking the ``top_k`` lowest scores
in order, a task too similar to one kept before it moves behind them (its score becomes
``max((1 + score) / 2, boundary)``, the boundary being the ``top_k``-th score). Only those
``top_k`` scores can change, and a moved task's score follows its own, so a retrain rewrites
few predictions (the push rewrites a task only when its score moved past a small epsilon).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SAMPLING_RULES = ("least_confidence", "margin", "entropy")
TOP_K = 200  # how many of the most uncertain tasks `diversify` re-ranks
# Cosine similarity of two standardised embeddings (service.vision.duplicates) above which two
# tasks count as near-duplicates; the held-out split uses the same threshold.
NEAR_DUPLICATE = 0.95


@dataclass(frozen=True)
class Ranking:
    """How pushed scores are made: ``[training] sampling``, ``diverse``, ``near_duplicate``."""

    rule: str = "margin"
    diverse: bool = True
    threshold: float = NEAR_DUPLICATE

    def scores(self, probs: torch.Tensor, units: torch.Tensor | None) -> torch.Tensor:
        """(N,) pushed scores of rows with probabilities ``probs``; ``units``: their
        embeddings as `standardised_units` (by the head's mean and std), needed if diverse."""
        scores = uncertainty_scores(probs, self.rule)
        if not self.diverse or len(scores) < 2:
            return scores
        if units is None:
            raise ValueError("diverse re-ranking needs the embeddings")
        return diversify(scores, units, threshold=self.threshold)


def uncertainty_scores(probs: torch.Tensor, rule: str) -> torch.Tensor:
    """(N,) scores in [0, 1] of (N, C) probabilities under ``rule``; low = most uncertain."""
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"expected probabilities (N, C) with C >= 2, got {tuple(probs.shape)}")
    p = probs.detach().to(torch.float64).clamp(0.0, 1.0)
    if rule == "least_confidence":
        scores = p.max(dim=1).values
    elif rule == "margin":
        top2 = p.topk(2, dim=1).values
        scores = top2[:, 0] - top2[:, 1]
    elif rule == "entropy":
        logs = torch.where(p > 0, p.log(), torch.zeros_like(p))
        entropy = -(p * logs).sum(dim=1)
        scores = 1.0 - entropy / math.log(p.shape[1])
    else:
        raise ValueError(f"unknown sampling rule {rule!r}: expected one of {SAMPLING_RULES}")
    return scores.clamp(0.0, 1.0).to(torch.float32)


def diversify(
    scores: torch.Tensor,
    embeddings: torch.Tensor,
    *,
    top_k: int = TOP_K,
    threshold: float = NEAR_DUPLICATE,
) -> torch.Tensor:
    """``scores`` (N,) with the near-duplicates among the ``top_k`` lowest moved back.

    ``embeddings`` (N, dim) are compared by cosine similarity as they are: pass them through
    `service.vision.duplicates.standardised_units` first (the head's mean and std). Ties in
    score go by row order (callers order rows by task id), so the result is deterministic.
    Rows outside the ``top_k`` keep their score.
    """
    if scores.ndim != 1 or embeddings.ndim != 2 or len(scores) != len(embeddings):
        raise ValueError(
            f"need scores (N,) and embeddings (N, dim), got {tuple(scores.shape)} and "
            f"{tuple(embeddings.shape)}"
        )
    result = scores.clone()
    n = len(scores)
    if n < 2 or top_k < 2 or threshold >= 1.0:
        return result
    # Stable sort: equal scores keep row order.
    order = torch.sort(scores, stable=True).indices[: min(top_k, n)]
    boundary = float(scores[order[-1]])
    unit = embeddings.detach().to(torch.float32)
    unit = unit / unit.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sims = unit[order] @ unit[order].T
    kept: list[int] = []
    for rank in range(len(order)):
        if kept and bool((sims[rank, kept] > threshold).any()):
            row = int(order[rank])
            result[row] = max((1.0 + float(scores[row])) / 2.0, boundary)
        else:
            kept.append(rank)
    return result
