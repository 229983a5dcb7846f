"""The fine-tune mode: the whole network trains, and splits into a backbone and a head."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from sqlalchemy.engine import Engine

from service.context import Services
from service.ingest.fold import fold_pending
from service.jobs.triggers import run_schedule, training_kind
from service.jobs.versions import materialize_weights
from service.jobs.worker import Worker
from service.settings import Settings, TrainingSettings
from service.vision.backbone import Backbone, BackboneSpec
from service.vision.finetune import finetune
from service.vision.images import decode_image, preprocess
from storage import events, jobs, models
from tests import payloads
from tests.fake_labelstudio import BLUE, RED, FakeLabelStudio, annotate, color_image, first_six

SPEC = BackboneSpec("resnet18", "none", 64)


def images(n: int) -> tuple[list[torch.Tensor], list[str]]:
    colours = [RED if i % 2 else BLUE for i in range(n)]
    tensors = [preprocess(decode_image(color_image(c, seed=i)), 64) for i, c in enumerate(colours)]
    return tensors, ["red" if i % 2 else "blue" for i in range(n)]


def test_finetuned_backbone_plus_head_is_the_finetuned_network(tmp_path: Path) -> None:
    x, y = images(12)
    ticks: list[tuple[int, int]] = []
    result = finetune(
        SPEC, x, y, list(range(12)), device=torch.device("cpu"), epochs=2,
        progress=lambda done, total: ticks.append((done, total)),
    )  # fmt: skip
    assert ticks == [(1, 2), (2, 2)]
    assert not any(k.startswith("fc.") for k in result.backbone)
    assert result.head.labels == ["blue", "red"]
    path = tmp_path / "tuned.pt"
    torch.save(result.backbone, path)
    tuned = Backbone(BackboneSpec("resnet18", str(path), 64), torch.device("cpu"))
    untouched = Backbone(SPEC, torch.device("cpu"))
    vectors = tuned.embed(x[:4])
    assert not torch.allclose(vectors, untouched.embed(x[:4]))  # the backbone itself trained
    probabilities = result.head.predict_proba(vectors)
    assert probabilities.shape == (4, 2)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(4))


def test_weights_are_materialized_once_by_content() -> None:
    first = materialize_weights(b"weights-a")
    assert materialize_weights(b"weights-a") == first
    assert materialize_weights(b"weights-b") != first
    assert first.read_bytes() == b"weights-a"


def test_schedule_can_finetune_while_threshold_retrains_the_head(engine: Engine) -> None:
    settings = Settings(
        training=TrainingSettings(threshold=1, schedule="1h", schedule_mode="finetune")
    )
    assert training_kind(settings.training) == "train"
    assert training_kind(settings.training, scheduled=True) == "finetune"
    body = payloads.annotation_event(1, 1, "red")
    with engine.begin() as conn:
        events.append(conn, action=body["action"], project_id=1, body=json.dumps(body))
        queued = fold_pending(conn, settings).queued_jobs
        scheduled = run_schedule(conn, settings, "1h")
        kinds = sorted(jobs.get(conn, j).kind for j in queued + scheduled)  # type: ignore[union-attr]
    assert kinds == ["finetune", "train"]  # both wait side by side; one runs at a time


@pytest.mark.anyio
async def test_finetune_job_stores_the_network_and_pushes(
    services: Services, fake: FakeLabelStudio
) -> None:
    training = dataclasses.replace(services.settings.training, mode="finetune", finetune_epochs=1)
    services.settings = dataclasses.replace(services.settings, training=training)
    annotate(services, *first_six())
    worker = Worker(services)
    assert await worker.run_until_idle() == 1
    with services.engine.begin() as conn:
        job = jobs.recent(conn, 1)[0]
        version = models.active(conn, 1)
    assert (job.kind, job.status) == ("finetune", "succeeded")
    assert version is not None and version.backbone_weights is not None
    assert version.settings["mode"] == "finetune"
    assert version.backbone.startswith("resnet18|file:")
    assert sorted(p["task"] for p in fake.predictions) == [7, 8, 9, 10]
    assert fake.model_version == "labelloop"  # every version shows under the one name
