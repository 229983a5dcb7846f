"""The worker runs the whole pipeline against a fake Label Studio, on real images and torch."""

import dataclasses
import json

import pytest

from service.context import Services
from service.ingest.fold_loop import fold_all
from service.jobs import triggers
from service.jobs.worker import Worker
from storage import events, jobs, labels, models
from tests import payloads
from tests.fake_labelstudio import RED, FakeLabelStudio, annotate, color_image, first_six

pytestmark = pytest.mark.anyio


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
    assert {p["model_version"] for p in fake.predictions} == {"labelloop"}  # the project's name
    assert fake.model_version == "labelloop"
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
    assert fake.model_version == "labelloop"


async def test_push_resumes_without_duplicates(services: Services, fake: FakeLabelStudio) -> None:
    # Label Studio stores the import but the answer is lost (a 503 after the write)...
    fake.fail_imports = 1
    annotate(services, *first_six())
    worker = Worker(services)
    await worker.run_until_idle()
    # ...the push asks Label Studio about the tasks it was writing, and a second push of the
    # same version (a restart mid-push) adds nothing.
    assert sorted(p["task"] for p in fake.predictions) == [7, 8, 9, 10]
    with services.engine.begin() as conn:
        row = models.active(conn, 1)
        assert row is not None
        assert jobs.recent(conn, 1)[0].status == "succeeded"
    with services.engine.begin() as conn:
        jobs.enqueue(conn, 1, "manual", kind="push", model_version=row.version)
    assert await worker.run_until_idle() == 1
    with services.engine.begin() as conn:
        assert jobs.recent(conn, 1)[0].progress["pushed"] == 0
    assert sorted(p["task"] for p in fake.predictions) == [7, 8, 9, 10]
    assert fake.model_version == "labelloop"
    assert not fake.listed_project_predictions()


async def test_one_class_only_is_skipped_with_reason(services: Services) -> None:
    annotate(services, *[(100 + t, t, "red", "2026-11-29T10:00:00Z") for t in range(1, 7)])
    await Worker(services).run_until_idle()
    with services.engine.begin() as conn:
        job = jobs.recent(conn, 1)[0]
    assert job.status == "skipped"
    assert "two classes" in job.error


async def test_new_tasks_get_the_active_models_predictions_without_a_retrain(
    services: Services, fake: FakeLabelStudio
) -> None:
    annotate(services, *first_six())
    worker = Worker(services)
    await worker.run_until_idle()
    for task_id in (13, 14):
        fake.add_task(task_id, color_image(RED, seed=task_id))
    body = {
        "action": "TASKS_CREATED",
        "project": payloads.project(),
        "tasks": [fake.tasks[13], fake.tasks[14]],
    }
    with services.engine.begin() as conn:
        events.append(conn, action="TASKS_CREATED", project_id=1, body=json.dumps(body))
    assert len(fold_all(services).queued_jobs) == 1
    assert await worker.run_until_idle() == 1
    with services.engine.begin() as conn:
        job = jobs.recent(conn, 1)[0]
        assert len(models.listing(conn, 1)) == 1  # no new version
    assert (job.kind, job.reason, job.status) == ("push", "new-tasks", "succeeded")
    tasks = sorted(p["task"] for p in fake.predictions)
    assert tasks == [7, 8, 9, 10, 13, 14]


async def test_a_training_reads_the_tasks_from_the_log_without_listing_label_studio(
    services: Services, fake: FakeLabelStudio
) -> None:
    annotate(services, *first_six())
    listed = fake.listings
    assert await Worker(services).run_until_idle() == 1
    assert fake.listings == listed  # catch-up reconciles the task list, not every job
    assert sorted(p["task"] for p in fake.predictions) == [7, 8, 9, 10]


async def test_the_first_training_of_a_project_never_caught_up_learns_every_task_first(
    unregistered: Services, fake: FakeLabelStudio
) -> None:
    """Only the annotations' webhooks arrived (tasks 1-6); Label Studio holds 12 tasks."""
    annotate(unregistered, *first_six(), fake=fake)
    # The training, and the push that tasks learned during a training queue (a no-op here).
    assert await Worker(unregistered).run_until_idle() == 2
    assert sorted(p["task"] for p in fake.predictions) == [7, 8, 9, 10]
    with unregistered.engine.begin() as conn:
        project = labels.get_project(conn, 1)
    assert project is not None and project.caught_up_at is not None


async def test_a_retrain_with_nothing_changed_stores_no_version(
    services: Services, fake: FakeLabelStudio
) -> None:
    """Issue 16: a manual retrain on the same labels used to store a copy of the active
    version; it says so instead. Another label, or another setting, trains again."""
    annotate(services, *first_six())
    worker = Worker(services)
    await worker.run_until_idle()
    shown = {p["task"]: p["score"] for p in fake.predictions}
    imports = sum(call.endswith("/import/predictions") for call in fake.calls)

    with services.engine.begin() as conn:
        job_id, _ = triggers.request_training(conn, services.settings, 1, "manual")
    assert await worker.run_until_idle() == 1
    with services.engine.begin() as conn:
        job = jobs.get(conn, job_id)
        versions = [v.version for v in models.listing(conn, 1)]
    assert job is not None and job.status == "succeeded", job
    assert job.note == "nothing changed since labelloop-v1"
    assert job.model_version is None
    assert versions == ["labelloop-v1"]
    # Its predictions were checked, not sent again.
    assert {p["task"]: p["score"] for p in fake.predictions} == shown
    assert sum(call.endswith("/import/predictions") for call in fake.calls) == imports

    # One more label: a new version.
    annotate(services, (107, 7, "red", "2026-11-29T12:00:00Z"))
    with services.engine.begin() as conn:
        triggers.request_training(conn, services.settings, 1, "manual")
    await worker.run_until_idle()
    # The same labels under another setting: a new version too.
    training = dataclasses.replace(services.settings.training, sampling="least_confidence")
    services.settings = dataclasses.replace(services.settings, training=training)
    with services.engine.begin() as conn:
        triggers.request_training(conn, services.settings, 1, "manual")
    await worker.run_until_idle()
    with services.engine.begin() as conn:
        versions = [v.version for v in models.listing(conn, 1)]
        latest = models.active(conn, 1)
    assert versions == ["labelloop-v3", "labelloop-v2", "labelloop-v1"]
    assert latest is not None and latest.settings["sampling"] == "least_confidence"
