"""Task order (service.vision.ranking): each sampling rule on hand-made probabilities, and the
diverse re-ranking of near-duplicates."""

from __future__ import annotations

import math

import pytest
import torch

from service import settings
from service.vision import ranking
from service.vision.ranking import Ranking, diversify, uncertainty_scores

# Rows: sure of class 0; a tie between two classes; spread over all three; two-way 0.6/0.4.
PROBS = torch.tensor(
    [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.0],
        [1 / 3, 1 / 3, 1 / 3],
        [0.6, 0.4, 0.0],
        [0.6, 0.2, 0.2],
    ]
)


def test_least_confidence_is_the_top_probability() -> None:
    scores = uncertainty_scores(PROBS, "least_confidence")
    assert scores.tolist() == pytest.approx([1.0, 0.5, 1 / 3, 0.6, 0.6])


def test_margin_is_top_minus_runner_up() -> None:
    scores = uncertainty_scores(PROBS, "margin")
    assert scores.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.2, 0.4])


def test_entropy_is_one_minus_normalised_entropy() -> None:
    scores = uncertainty_scores(PROBS, "entropy")
    h = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(3)
    h3 = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2)) / math.log(3)
    expected = [1.0, 1 - math.log(2) / math.log(3), 0.0, 1 - h, 1 - h3]
    assert scores.tolist() == pytest.approx(expected, abs=1e-6)


def test_the_rules_order_tasks_differently() -> None:
    """Rows 3 and 4 have the same top probability: least confidence cannot tell them apart;
    margin puts the two-way doubt (row 3) first, entropy the spread one (row 4)."""
    lc, margin, entropy = (uncertainty_scores(PROBS, r) for r in ranking.SAMPLING_RULES)
    assert lc[3] == lc[4]
    assert margin[3] < margin[4]
    assert entropy[4] < entropy[3]


@pytest.mark.parametrize("rule", ranking.SAMPLING_RULES)
def test_every_rule_maps_random_probabilities_into_0_1(rule: str) -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(500, 7, generator=generator) * 3, dim=1)
    scores = uncertainty_scores(probs, rule)
    assert scores.shape == (500,)
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0


def test_unknown_rule_and_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown sampling rule"):
        uncertainty_scores(PROBS, "random")
    with pytest.raises(ValueError, match="C >= 2"):
        uncertainty_scores(torch.ones(3, 1), "margin")


def test_settings_accept_exactly_the_rules() -> None:
    assert settings.SAMPLING_RULES == ranking.SAMPLING_RULES
    assert settings.TrainingSettings().sampling == Ranking().rule == "margin"


def _embeddings(groups: list[int], dim: int = 16) -> torch.Tensor:
    """One random direction per group id, each row a tiny perturbation of its group's."""
    generator = torch.Generator().manual_seed(1)
    directions = torch.randn(max(groups) + 1, dim, generator=generator)
    noise = 0.01 * torch.randn(len(groups), dim, generator=generator)
    return directions[groups] + noise


def test_diverse_moves_near_duplicates_behind_the_first_of_them() -> None:
    # Tasks 0-4 are copies of one image and the most uncertain; 5-9 are all different.
    scores = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05, 0.10, 0.20, 0.30, 0.40, 0.50])
    x = _embeddings([0, 0, 0, 0, 0, 1, 2, 3, 4, 5])
    moved = diversify(scores, x, top_k=10, threshold=0.95)
    top = torch.argsort(moved, stable=True)[:6].tolist()
    assert top == [0, 5, 6, 7, 8, 9]  # one copy, then the different ones
    assert moved[0] == scores[0] and torch.equal(moved[5:], scores[5:])
    assert bool((moved[1:5] >= 0.5).all())  # behind the top_k's last score
    assert moved[1:5].tolist() == sorted(moved[1:5].tolist())  # copies keep their order
    assert float(moved.max()) <= 1.0


def test_diverse_changes_only_the_top_k_and_nothing_without_duplicates() -> None:
    scores = torch.linspace(0.0, 0.9, 10)
    copies = _embeddings([0] * 10)
    moved = diversify(scores, copies, top_k=3, threshold=0.95)
    assert torch.equal(moved[3:], scores[3:])  # outside the top 3: untouched
    assert moved[0] == scores[0] and bool((moved[1:3] > scores[2]).all())
    distinct = _embeddings(list(range(10)))
    assert torch.equal(diversify(scores, distinct, top_k=10, threshold=0.95), scores)
    assert torch.equal(diversify(scores, copies, top_k=10, threshold=1.0), scores)


def test_diverse_is_deterministic_on_ties() -> None:
    scores = torch.zeros(4)
    x = _embeddings([0, 0, 1, 1])
    first = diversify(scores, x, threshold=0.95)
    assert torch.equal(first, diversify(scores, x, threshold=0.95))
    assert first.tolist() == [0.0, 0.5, 0.0, 0.5]  # the lower row of each pair stays first


def test_ranking_combines_the_rule_and_the_re_ranking() -> None:
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])
    x = _embeddings([0, 0, 1])
    assert Ranking("margin", diverse=False).scores(probs, None).tolist() == pytest.approx(
        [0.0, 0.0, 0.8]
    )
    assert Ranking("margin").scores(probs, x).tolist() == pytest.approx([0.0, 0.8, 0.8])
    with pytest.raises(ValueError, match="needs the embeddings"):
        Ranking("margin").scores(probs, None)
