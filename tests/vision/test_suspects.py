"""Confident learning on out-of-fold probabilities (service/vision/suspects.py): torch only."""

import random

import pytest
import torch

from service.vision.head import FOLDS, _fit, fold_of
from service.vision.suspects import confident_thresholds, find_suspects, out_of_fold, suspects


def clusters(n_per_class: int, classes: list[str], dim: int = 8, seed: int = 0) -> torch.Tensor:
    """Well separated Gaussian clusters, ``n_per_class`` rows per class, in class order."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(len(classes), dim, generator=generator) * 6
    rows = [centers[c] + torch.randn(n_per_class, dim, generator=generator) for c in range(3)]
    return torch.cat(rows)


def test_thresholds_are_the_average_self_confidence_and_a_suspect_needs_a_confident_class() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9], [0.6, 0.4]])
    labels = ["a", "a", "a", "b", "b", "b"]
    given = torch.tensor([0, 0, 0, 1, 1, 1])
    thresholds = confident_thresholds(probs, given, 2)
    assert thresholds.tolist() == pytest.approx([1.9 / 3, 2.0 / 3])

    found = find_suspects(probs, labels, ["a", "b"])
    # Row 2 (labeled a) is confidently b. Row 5 (labeled b) leans a, but 0.6 is under a's
    # threshold: plain argmax would flag it, confident learning does not.
    assert [(s.index, s.given, s.predicted) for s in found] == [(2, "a", "b")]
    assert found[0].score == pytest.approx(0.8)


def test_the_most_suspicious_come_first_and_unscored_rows_are_never_suspects() -> None:
    probs = torch.tensor(
        [
            [0.95, 0.05],
            [0.9, 0.1],
            [0.3, 0.7],  # labeled a, confidently b: score 0.7
            [0.1, 0.9],  # labeled a, confidently b: score 0.9
            [float("nan"), float("nan")],  # labeled a, its fold was not predicted
            [0.5, 0.5],
            [0.2, 0.8],
        ]
    )
    labels = ["a", "a", "a", "a", "a", "b", "b"]  # thresholds: a 0.5625, b 0.65
    found = find_suspects(probs, labels, ["a", "b"])
    assert [s.index for s in found] == [3, 2]
    assert [s.score for s in found] == pytest.approx([0.9, 0.7])
    assert all(0.0 <= s.score <= 1.0 for s in found)


def test_out_of_fold_rows_come_from_a_head_that_did_not_see_them() -> None:
    classes = ["x", "y", "z"]
    x = clusters(20, classes)
    labels = [c for c in classes for _ in range(20)]
    task_ids = list(range(1, 61))
    probs = out_of_fold(x, labels, task_ids, classes)
    folds = torch.tensor([fold_of(t) for t in task_ids])
    y = torch.tensor([classes.index(label) for label in labels])
    for fold in range(FOLDS):
        held = folds == fold
        head = _fit(x[~held], y[~held], classes, 500, 0)
        assert torch.allclose(probs[held], head.predict_proba(x[held]), atol=1e-5)
    assert torch.allclose(probs.sum(dim=1), torch.ones(60), atol=1e-5)


def test_flipped_labels_are_found_and_clean_ones_left_alone() -> None:
    classes = ["x", "y", "z"]
    x = clusters(50, classes, seed=3)
    truth = [c for c in classes for _ in range(50)]
    rng = random.Random(7)
    flipped = set(rng.sample(range(150), 8))
    labels = [
        rng.choice([c for c in classes if c != t]) if i in flipped else t
        for i, t in enumerate(truth)
    ]
    found = suspects(x, labels, list(range(1000, 1150)))
    top = {s.index for s in found[: 2 * len(flipped)]}
    assert len(top & flipped) >= 7, (sorted(top), sorted(flipped))
    assert len(found) <= 2 * len(flipped)
    for s in found:
        if s.index in flipped:
            assert s.predicted == truth[s.index]  # the label it really has


def test_a_single_class_has_no_suspects_and_shapes_are_checked() -> None:
    x = torch.randn(12, 4)
    assert suspects(x, ["a"] * 12, list(range(12))) == []
    with pytest.raises(ValueError, match="probabilities"):
        find_suspects(torch.ones(3, 2) / 2, ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="embeddings"):
        out_of_fold(torch.randn(3, 4), ["a", "b"], [1, 2, 3], ["a", "b"])


def test_copies_of_a_mislabeled_image_do_not_hide_each_other() -> None:
    """Six copies of one class-a image, all labeled b (one annotator's habit): split by task id,
    each copy is scored by heads trained on the others, which learned "b"; split by their
    near-duplicate group they are held out together and the model's "a" shows."""
    classes = ["a", "b", "c"]
    x = clusters(30, classes)
    labels = [c for c in classes for _ in range(30)]
    ids = list(range(1, 91))
    copies = list(range(1001, 1007))
    assert len({fold_of(t) for t in copies}) > 1  # by task id they spread over folds
    x = torch.cat([x, x[0].repeat(len(copies), 1)])
    labels += ["b"] * len(copies)
    ids += copies
    groups = [t if t < 1000 else copies[0] for t in ids]

    by_id = {ids[s.index] for s in suspects(x, labels, ids)}
    by_group = {ids[s.index] for s in suspects(x, labels, ids, split_ids=groups)}

    assert not by_id & set(copies)
    assert set(copies) <= by_group
