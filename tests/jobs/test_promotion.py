"""The promotion gate, rollback, and what a failed training leaves behind."""

import types
from typing import Any

import pytest
import torch

from service.context import Services
from service.jobs import pipeline, versions
from service.jobs.promotion import decide
from service.jobs.worker import Worker
from service.vision.head import Head, Metrics, TrainResult
from service.web.control import _activate
from storage import jobs, models
from tests.fake_labelstudio import FakeLabelStudio, annotate, first_six

pytestmark = pytest.mark.anyio


def metrics(macro_f1: float, scheme: str = "holdout") -> Metrics:
    return Metrics(
        accuracy=macro_f1,
        macro_f1=macro_f1,
        n_train=80,
        n_holdout=20,
        per_class={},
        confusion=[],
        labels=["blue", "red"],
        scheme=scheme,
    )


def active_row(macro_f1: float | None, labels: tuple[str, ...] = ("blue", "red")) -> Any:
    stored = None if macro_f1 is None else metrics(macro_f1).to_dict()
    return types.SimpleNamespace(version="labelloop-v1", labels=list(labels), metrics=stored)


@pytest.mark.parametrize(
    ("new", "labels", "active", "same_tasks", "promote", "says"),
    [
        (metrics(0.5), ["blue", "red"], None, None, True, "first version"),
        (metrics(0.5), ["blue", "green", "red"], active_row(0.9), None, True, "label set"),
        (None, ["blue", "red"], active_row(0.9), None, True, "too few labels"),
        (metrics(0.79), ["blue", "red"], active_row(0.5), metrics(0.80), True, "same held-out"),
        (metrics(0.70), ["blue", "red"], active_row(0.5), metrics(0.80), False, "kept, not"),
        (metrics(0.70, "5-fold"), ["blue", "red"], active_row(0.80), None, False, "cross-val"),
        (metrics(0.85, "5-fold"), ["blue", "red"], active_row(0.80), None, True, "cross-val"),
        (metrics(0.85), ["blue", "red"], active_row(None), None, True, "no comparable"),
    ],
)
def test_gate(
    new: Metrics | None,
    labels: list[str],
    active: Any,
    same_tasks: Metrics | None,
    promote: bool,
    says: str,
) -> None:
    decision = decide(new, labels, active, same_tasks, margin=0.02)
    assert decision.promote is promote
    assert says in decision.reason


def worse_result(*_: Any, **__: Any) -> TrainResult:
    """A head that learned nothing, with the figures to prove it."""
    head = Head(["blue", "red"], 512)
    torch.nn.init.zeros_(head.linear.weight)
    return TrainResult(head=head, metrics=metrics(0.1, "5-fold"))


async def test_worse_version_is_kept_but_not_promoted_then_rolled_forward(
    services: Services, fake: FakeLabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    # v1 from real training on separable colours; force a cross-validated figure for it.
    annotate(services, *first_six())
    worker = Worker(services)
    await worker.run_until_idle()
    with services.engine.begin() as conn:
        v1 = models.active(conn, 1)
        assert v1 is not None and v1.version == "labelloop-v1"
        conn.execute(
            models.model_versions.update().values(metrics=metrics(0.9, "5-fold").to_dict())
        )

    monkeypatch.setattr(pipeline, "train_head", worse_result)
    annotate(services, *first_six("2026-11-29T12:00:00Z"))  # six updates: threshold again
    await worker.run_until_idle()
    with services.engine.begin() as conn:
        assert models.active(conn, 1).version == "labelloop-v1"  # type: ignore[union-attr]
        v2 = models.get(conn, 1, "labelloop-v2")
        job = jobs.recent(conn, 1)[0]
    assert v2 is not None and not v2.active
    assert v2.promotion.startswith("kept, not promoted: macro-F1 0.100 vs labelloop-v1's 0.900")
    assert job.status == "succeeded" and job.note == v2.promotion
    assert {p["model_version"] for p in fake.predictions} == {"labelloop-v1"}
    assert fake.model_version == "labelloop-v1"

    # A person overrules the gate: v2 becomes active and its predictions are pushed.
    assert _activate(services, 1, "labelloop-v9") is None
    push_job = _activate(services, 1, "labelloop-v2")
    assert push_job is not None
    assert await worker.run_until_idle() == 1
    pushed = sorted(p["task"] for p in fake.predictions if p["model_version"] == "labelloop-v2")
    assert pushed == [7, 8, 9, 10]
    assert fake.model_version == "labelloop-v2"
    with services.engine.begin() as conn:
        assert models.active(conn, 1).version == "labelloop-v2"  # type: ignore[union-attr]
        assert jobs.get(conn, push_job).status == "succeeded"  # type: ignore[union-attr]

    # And back: rolling back to v1 pushes nothing new (its predictions are there) but
    # switches the project's version.
    _activate(services, 1, "labelloop-v1")
    await worker.run_until_idle()
    assert fake.model_version == "labelloop-v1"
    assert len(fake.predictions) == 8


async def test_a_crash_while_registering_leaves_the_previous_version_active(
    services: Services, fake: FakeLabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    annotate(services, *first_six())
    worker = Worker(services)
    await worker.run_until_idle()

    def crash(*_: Any) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(versions.models, "activate", crash)
    annotate(services, *first_six("2026-11-29T12:00:00Z"))
    await worker.run_until_idle()
    with services.engine.begin() as conn:
        assert models.active(conn, 1).version == "labelloop-v1"  # type: ignore[union-attr]
        assert models.get(conn, 1, "labelloop-v2") is None  # nothing half-written
        job = jobs.recent(conn, 1)[0]
    assert job.status == "failed"
    assert job.error == "RuntimeError: power cut"
    assert fake.model_version == "labelloop-v1"
