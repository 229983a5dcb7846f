"""Multi-label and multi-target heads on tensors alone."""

import pytest
import torch

from service.vision.head import Head
from service.vision.multilabel import (
    best_thresholds,
    confidence,
    multilabel_metrics,
    train_ovr,
)
from service.vision.multitarget import (
    MultiHead,
    TargetError,
    TargetSpec,
    load_model,
    train_targets,
)

LABELS = ("even", "five+", "loop")


def digits_like(n: int, seed: int = 0) -> tuple[torch.Tensor, list[list[str]], list[int]]:
    """Embeddings whose first three dimensions carry one tag each (noisy), 16 dims of noise."""
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(n, 3, generator=g) < 0.5
    x = torch.randn(n, 16, generator=g) * 0.5
    x[:, :3] += on.float() * 2.0
    answers = [[LABELS[j] for j in range(3) if on[i, j]] for i in range(n)]
    return x, answers, list(range(1000, 1000 + n))


def test_thresholds_maximise_f1_on_the_given_probabilities() -> None:
    probs = torch.tensor([[0.1], [0.3], [0.35], [0.8]])
    truth = torch.tensor([[0], [1], [1], [1]])
    [t] = best_thresholds(probs, truth).tolist()
    assert 0.1 < t <= 0.3  # 0.5 would miss two of three positives
    assert best_thresholds(probs, torch.zeros(4, 1)).tolist() == [0.5]  # no positive


def test_confidence_is_half_at_the_threshold_and_one_at_the_ends() -> None:
    thresholds = torch.tensor([0.2, 0.5])
    probs = torch.tensor([[0.2, 1.0], [0.0, 0.0], [1.0, 0.75]])
    assert confidence(probs, thresholds).tolist() == pytest.approx([0.5, 1.0, 0.75])


def test_metrics_micro_macro_and_subset() -> None:
    truth = torch.tensor([[1, 0], [1, 1], [0, 0]], dtype=torch.bool)
    guess = torch.tensor([[1, 0], [1, 0], [0, 1]], dtype=torch.bool)
    m = multilabel_metrics(truth, guess, ["a", "b"])
    assert m["per_label"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2.0}
    assert m["per_label"]["b"]["f1"] == 0.0
    assert m["micro_f1"] == pytest.approx(2 * 2 / (3 + 3))  # 2 hits, 3 guessed, 3 true
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["subset_accuracy"] == pytest.approx(1 / 3)


def test_one_vs_rest_learns_each_tag_and_reports_out_of_fold_figures() -> None:
    x, answers, ids = digits_like(200)
    result = train_ovr(x, answers, ids, LABELS)
    assert result.metrics is not None and result.metrics["scheme"] == "5-fold"
    assert result.metrics["micro_f1"] > 0.9
    assert result.metrics["n_holdout"] == 200 and len(result.held_out) == 200
    assert set(result.metrics["thresholds"]) == set(LABELS)
    predicted = result.head.predict(x[:20])
    right = sum(sorted(tags) == sorted(answers[i]) for i, (tags, _) in enumerate(predicted))
    assert right >= 16
    assert all(0.5 <= score <= 1.0 for _, score in predicted)


def test_a_tag_nobody_ticked_is_never_predicted() -> None:
    x, answers, ids = digits_like(60)
    result = train_ovr(x, [[t for t in a if t != "loop"] for a in answers], ids, LABELS)
    assert all("loop" not in tags for tags, _ in result.head.predict(x))


def test_targets_train_together_and_round_trip() -> None:
    x, answers, ids = digits_like(150, seed=1)
    specs = [TargetSpec("parity", ("odd", "even"), False), TargetSpec("tags", LABELS, True)]
    both = [{"parity": ["even" if "even" in a else "odd"], "tags": a} for a in answers]
    result = train_targets(x, both, ids, specs)
    m = result.metrics
    assert m is not None and m.targets is not None
    assert set(m.targets) == {"parity", "tags"}
    assert m.targets["tags"]["micro_f1"] > 0.9 and m.targets["parity"]["accuracy"] > 0.9
    assert "tags: loop" in m.per_class and "parity: even" in m.per_class
    assert 0.0 <= m.accuracy <= 1.0 and m.confusion == []
    assert m.to_dict()["targets"]["tags"]["multiple"] is True
    loaded = load_model(result.head.to_bytes())
    assert isinstance(loaded, MultiHead)
    assert loaded.predict(x[:5]) == result.head.predict(x[:5])
    answer, score = loaded.predict(x[:1])[0]
    assert sorted(answer) == ["parity", "tags"] and 0.0 <= score <= 1.0


def test_a_classic_head_still_loads_as_a_head() -> None:
    head = Head(["a", "b"], 4)
    assert isinstance(load_model(head.to_bytes()), Head)
    with pytest.raises(ValueError, match="not a serialised"):
        load_model(b"garbage")


def test_a_single_choice_target_answered_by_one_class_is_named() -> None:
    x, answers, ids = digits_like(30)
    specs = [TargetSpec("parity", ("odd", "even"), False)]
    with pytest.raises(TargetError, match='<Choices name="parity">'):
        train_targets(x, [{"parity": ["odd"]} for _ in answers], ids, specs)
