"""The near-duplicate split (service.vision.duplicates, train_head(split_ids=...)): a group of
near-copies lands on one side of the held-out split, fold by its smallest task id."""

from __future__ import annotations

import pytest
import torch

from service.vision import duplicates
from service.vision.compare import refit_predictions
from service.vision.duplicates import groups, split_ids, standardised_units
from service.vision.head import fold_of, holdout_mask, train_head

COPIES = 5


def _copies(group_of: list[int], dim: int = 32, noise: float = 0.02) -> torch.Tensor:
    """Non-negative "embeddings" (as after a ReLU): one random image per group, each row a
    slightly noisy copy of its group's."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(max(group_of) + 1, dim, generator=generator)
    return images[group_of] + noise * torch.rand(len(group_of), dim, generator=generator)


def test_groups_get_their_smallest_task_id() -> None:
    x = _copies([0, 1, 0, 2, 1, 0])
    ids = [50, 7, 12, 3, 90, 30]
    assert split_ids(x, ids, 0.95) == [12, 7, 12, 3, 7, 12]
    assert groups(ids, split_ids(x, ids, 0.95)) == [[7, 90], [12, 30, 50]]


def test_standardising_tells_unrelated_non_negative_vectors_apart() -> None:
    """Raw ReLU-like vectors are all alike by cosine; standardised, only copies are."""
    x = _copies(list(range(20)))
    raw = torch.nn.functional.normalize(x, dim=1)
    assert float((raw @ raw.T).min()) > 0.6  # every pair would look like a near-copy
    unit = standardised_units(x)
    sims = unit @ unit.T - 2 * torch.eye(20)
    assert float(sims.max()) < 0.8
    assert split_ids(x, list(range(20)), 0.95) == list(range(20))


def test_a_chain_of_near_copies_is_one_group_and_threshold_1_groups_nothing() -> None:
    generator = torch.Generator().manual_seed(2)
    start, end = torch.rand(16, generator=generator), torch.rand(16, generator=generator)
    steps = [start + (end - start) * t / 20 for t in range(21)]
    others = list(torch.rand(30, 16, generator=generator))
    x = torch.stack(steps + others)
    ids = list(range(100, 151))
    split = split_ids(x, ids, 0.95)
    assert split[:21] == [100] * 21  # neighbours link the first frame to the last
    assert split_ids(x, ids, 1.0) == ids


def test_chunks_find_pairs_across_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    group_of = [i % 7 for i in range(40)]
    x = _copies(group_of)
    whole = split_ids(x, list(range(40)), 0.95)
    assert whole == group_of  # the smallest id of group g is g
    monkeypatch.setattr(duplicates, "CHUNK", 3)
    assert split_ids(x, list(range(40)), 0.95) == whole


def test_a_large_burst_is_one_group() -> None:
    """3,000 frames of one scene among 200 other images: one group, though each row is joined
    to at most NEIGHBOURS later rows (all pairs would be 4.5 million joins)."""
    group_of = [0] * 3000 + list(range(1, 201))
    x = _copies(group_of, noise=0.005)
    split = split_ids(x, list(range(3200)), 0.95)
    assert split[:3000] == [0] * 3000
    assert split[3000:] == list(range(3000, 3200))


def _near_copy_data(images: int) -> tuple[torch.Tensor, list[str], list[int], list[int]]:
    """``images`` images, five copies each (task ids i, 1000 + i, ..., 4000 + i), labelled at
    random: a head is right on held-out tasks only by remembering copies it was trained on."""
    generator = torch.Generator().manual_seed(3)
    group_of = list(range(images)) * COPIES
    x = _copies(group_of, dim=256, noise=0.01)
    per_image = torch.randint(0, 3, (images,), generator=generator).tolist()
    labels = ["abc"[per_image[g]] for g in group_of]
    ids = [1000 * c + i for c in range(COPIES) for i in range(images)]
    return x, labels, ids, group_of


def test_held_out_copies_inflate_accuracy_and_the_group_split_removes_them() -> None:
    x, labels, ids, group_of = _near_copy_data(60)
    split = split_ids(x, ids, 0.95)
    assert split == group_of
    by_id = train_head(x, labels, ids)
    by_group = train_head(x, labels, ids, split_ids=split)
    assert by_id.metrics is not None and by_group.metrics is not None
    held = set(by_group.held_out)
    # Each image's copies are on one side: all held out, or none.
    assert all(len({1000 * c + i in held for c in range(COPIES)}) == 1 for i in range(60))
    assert held == {t for t, out in zip(ids, holdout_mask(split), strict=True) if out}
    # By task id most held-out tasks have copies in training: near-perfect, and wrong.
    assert by_id.metrics.accuracy > 0.8
    assert by_group.metrics.accuracy < 0.6  # random labels: near chance (1/3) once honest


def test_cross_validation_folds_follow_the_groups() -> None:
    x, labels, ids, group_of = _near_copy_data(12)  # 60 labels: 5-fold cross-validation
    split = split_ids(x, ids, 0.95)
    assert split == group_of
    leaky = train_head(x, labels, ids)
    result = train_head(x, labels, ids, split_ids=split)
    assert leaky.metrics is not None and result.metrics is not None
    assert result.metrics.scheme == "5-fold"
    assert leaky.metrics.accuracy > 0.8 and result.metrics.accuracy < 0.6


def test_the_gate_refit_uses_the_same_split() -> None:
    """The old recipe refit for the gate leaves out each held-out task's copies too."""
    x, labels, ids, _ = _near_copy_data(60)
    split = dict(zip(ids, split_ids(x, ids, 0.95), strict=True))
    held = [t for t in ids if fold_of(split[t]) == 0]
    rows = [ids.index(t) for t in held]
    truth = [labels[i] for i in rows]

    def accuracy(predicted: dict[int, str]) -> float:
        return sum(predicted[t] == y for t, y in zip(held, truth, strict=True)) / len(held)

    leaky = refit_predictions(x, labels, ids, x[rows], held, ["a", "b", "c"])
    honest = refit_predictions(x, labels, ids, x[rows], held, ["a", "b", "c"], split=split)
    assert accuracy(leaky) > 0.8 and accuracy(honest) < 0.6
