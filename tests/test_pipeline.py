"""The worker runs the whole pipeline against a fake Label Studio, on real images and torch."""

import json
from collections.abc import AsyncIterator

import pytest
import torch
from sqlalchemy.engine import Engine

from service.context import Services, open_services
from service.folder import fold_all
from service.predictions import push_predictions
from service.settings import DatabaseSettings, LabelStudioSettings, Settings, TrainingSettings
from service.vision.head import Head
from service.worker import Worker
from storage import events, jobs, labels, models
from tests import payloads
from tests.fake_labelstudio import TOKEN, FakeLabelStudio, color_image

RED, BLUE = (220, 30, 30), (30, 30, 220)
pytestmark = pytest.mark.anyio


@pytest.fixture
def fake() -> FakeLabelStudio:
    fake = FakeLabelStudio()
    for task_id in range(1, 11):
        fake.add_task(task_id, color_image(RED if task_id % 2 else BLUE, seed=task_id))
    fake.add_task(11, None)  # 404 on download
    fake.add_task(12, b"this is not an image")
    return fake


@pytest.fixture
async def services(engine: Engine, fake: FakeLabelStudio) -> AsyncIterator[Services]:
    settings = Settings(
        database=DatabaseSettings(url=str(engine.url.render_as_string(hide_password=False))),
        label_studio=LabelStudioSettings(url="http://ls.test", api_key=TOKEN),
        training=TrainingSettings(threshold=6, weights="none", image_size=64, device="cpu"),
    )
    async with open_services(settings, transport=fake.transport()) as services:
        yield services


def annotate(services: Services, *labeled: tuple[int, int, str, str]) -> None:
    """Post ANNOTATION_* events (annotation id, task id, label, updated_at) and fold them."""
    with services.engine.begin() as conn:
        for annotation_id, task_id, label, updated_at in labeled:
            body = payloads.annotation_event(annotation_id, task_id, label, updated_at=updated_at)
            events.append(conn, action=body["action"], project_id=1, body=json.dumps(body))
    fold_all(services)


def first_six(updated_at: str = "2026-11-29T10:00:00Z") -> list[tuple[int, int, str, str]]:
    return [(100 + t, t, "red" if t % 2 else "blue", updated_at) for t in range(1, 7)]


async def test_threshold_trains_and_pushes_one_prediction_per_unlabeled_task(
    services: Services, fake: FakeLabelStudio
) -> None:
    annotate(services, *first_six())
    assert await Worker(services).run_until_idle() == 1

    with services.engine.begin() as conn:
        active = models.active(conn, 1)
        failures = dict(labels.image_failures(conn, 1))
    assert active is not None and active.version == "labelloop-v1"
    assert active.trained_on == 6
    assert sorted(p["task"] for p in fake.predictions) == [7, 8, 9, 10]
    assert {p["model_version"] for p in fake.predictions} == {"labelloop-v1"}
    assert fake.model_version == "labelloop-v1"
    prediction = fake.predictions[0]
    assert prediction["result"][0]["from_name"] == "label"
    assert prediction["result"][0]["value"]["choices"][0] in ("red", "blue")
    assert 0.0 <= prediction["score"] <= 1.0
    assert failures[11] == "download failed: http 404"
    assert failures[12].startswith("not decodable")
    # Colour is trivially separable even for a random-init backbone.
    correct = sum(
        p["result"][0]["value"]["choices"][0] == ("red" if p["task"] % 2 else "blue")
        for p in fake.predictions
    )
    assert correct >= 3


async def test_relabel_costs_no_forward_pass_and_no_download(
    services: Services, fake: FakeLabelStudio
) -> None:
    annotate(services, *first_six())
    worker = Worker(services)
    await worker.run_until_idle()
    backbone = next(iter(worker.pipeline.embedder._backbones.values()))
    forward, downloads = backbone.forward_count, fake.downloads

    # Every label flips: six changes reach the threshold again.
    flipped = [
        (a, t, "blue" if label == "red" else "red", "2026-11-29T11:00:00Z")
        for a, t, label, _ in first_six()
    ]
    annotate(services, *flipped)
    assert await worker.run_until_idle() == 1

    assert backbone.forward_count == forward
    assert fake.downloads - downloads == 2  # only the two broken images are tried again
    with services.engine.begin() as conn:
        assert models.active(conn, 1).version == "labelloop-v2"  # type: ignore[union-attr]
    assert fake.model_version == "labelloop-v2"


async def test_push_resumes_without_duplicates(services: Services, fake: FakeLabelStudio) -> None:
    # Label Studio stores the import but the answer is lost (a 503 after the write)...
    fake.fail_imports = 1
    annotate(services, *first_six())
    worker = Worker(services)
    await worker.run_until_idle()
    # ...the push resumes from Label Studio's own list, and a second push of the same
    # version (a restart mid-push) adds nothing.
    assert sorted(p["task"] for p in fake.predictions) == [7, 8, 9, 10]
    with services.engine.begin() as conn:
        row = models.active(conn, 1)
        assert row is not None
        assert jobs.recent(conn, 1)[0].status == "succeeded"
    vectors = {t: torch.zeros(512) for t in (7, 8, 9, 10)}
    created = await push_predictions(
        services.label_studio,
        1,
        row.version,
        Head.from_bytes(row.head),
        vectors,
        from_name="label",
        to_name="image",
    )
    assert created == 0
    assert sorted(p["task"] for p in fake.predictions) == [7, 8, 9, 10]
    assert fake.model_version == row.version


async def test_one_class_only_is_skipped_with_reason(services: Services) -> None:
    annotate(services, *[(100 + t, t, "red", "2026-11-29T10:00:00Z") for t in range(1, 7)])
    await Worker(services).run_until_idle()
    with services.engine.begin() as conn:
        job = jobs.recent(conn, 1)[0]
    assert job.status == "skipped"
    assert "two classes" in job.error
