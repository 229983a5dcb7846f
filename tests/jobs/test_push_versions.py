"""Which version a push pushes, and what the project's model_version is left at.

Version names never collide with predictions another install left in Label Studio, and a push
queued for one version (new tasks, a rollback) pushes the version active when it runs, so what
annotators see is always labelloop's active version. The interleavings are forced by a
transport handler that makes the concurrent change in the middle of a job's Label Studio call.
"""

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest
import torch
from sqlalchemy.engine import Engine

from service.context import Services, open_services
from service.ingest.fold_loop import fold_all
from service.jobs import triggers
from service.jobs.catchup import learn
from service.jobs.prediction_body import prediction
from service.jobs.worker import Worker
from service.settings import DatabaseSettings, LabelStudioSettings, Settings, TrainingSettings
from service.vision.head import Head
from service.web.control import _activate
from storage import embeddings, events, jobs, labels, models
from tests import payloads
from tests.conftest import DEVICE
from tests.fake_labelstudio import (
    BLUE,
    RED,
    TOKEN,
    FakeLabelStudio,
    annotate,
    color_image,
    first_six,
)

pytestmark = pytest.mark.anyio

NAME = "labelloop"  # the one model_version labelloop's predictions carry in Label Studio

Hook = Callable[[httpx.Request], None]


@dataclass
class Interleave:
    """Runs ``hooks`` before the fake answers a request; records every model_version PATCH with
    the version labelloop held active at that moment (a PATCH sends the project's one name:
    only the predictions under it say which version they are)."""

    hooks: list[Hook] = field(default_factory=list)
    patches: list[tuple[str, str | None]] = field(default_factory=list)  # (sent, active)


@pytest.fixture
def interleave() -> Interleave:
    return Interleave()


@pytest.fixture
async def services(
    engine: Engine, fake: FakeLabelStudio, interleave: Interleave
) -> AsyncIterator[Services]:
    """conftest's services, with the fake behind a handler that runs the test's hooks."""
    settings = Settings(
        database=DatabaseSettings(url=engine.url.render_as_string(hide_password=False)),
        label_studio=LabelStudioSettings(url="http://ls.test", api_key=TOKEN),
        training=TrainingSettings(threshold=6, weights="none", image_size=64, device=DEVICE),
    )

    def handle(request: httpx.Request) -> httpx.Response:
        for hook in list(interleave.hooks):
            hook(request)
        if request.method == "PATCH" and request.url.path == "/api/projects/1/":
            with engine.begin() as conn:
                active = models.active(conn, 1)
            sent = json.loads(request.content)["model_version"]
            interleave.patches.append((sent, None if active is None else active.version))
        return fake.handle(request)

    async with open_services(settings, transport=httpx.MockTransport(handle)) as services:
        await learn(services, 1)  # registered: jobs read the tasks from the log
        yield services


def once(condition: Callable[[httpx.Request], bool], action: Callable[[], None]) -> Hook:
    """A hook that runs ``action`` the first time a request meets ``condition``."""
    done = False

    def hook(request: httpx.Request) -> None:
        nonlocal done
        if not done and condition(request):
            done = True
            action()

    return hook


def downloading(request: httpx.Request) -> bool:
    """An image download: the training has read its task list (from the log) by then."""
    return request.url.path.startswith("/data/upload/")


def importing(request: httpx.Request) -> bool:
    return request.url.path.endswith("/import/predictions")


def flipped(updated_at: str) -> list[tuple[int, int, str, str]]:
    return [
        (a, t, "blue" if label == "red" else "red", updated_at) for a, t, label, _ in first_six()
    ]


def active_version(services: Services) -> str:
    with services.engine.begin() as conn:
        row = models.active(conn, 1)
    assert row is not None
    return str(row.version)


def active_labels(services: Services) -> dict[int, str]:
    """What labelloop's active version predicts for each task, from the cached embeddings."""
    with services.engine.begin() as conn:
        row = models.active(conn, 1)
        assert row is not None
        tasks = [t for t in labels.project_tasks(conn, 1) if t.image_hash]
        stored = embeddings.get_many(conn, [t.image_hash for t in tasks], row.backbone)
    head = Head.from_bytes(row.head)
    found = {}
    for task in tasks:
        if task.image_hash in stored:
            vector = torch.frombuffer(bytearray(stored[task.image_hash]), dtype=torch.float32)
            found[task.id] = head.labels[int(head.predict_proba(vector[None])[0].argmax())]
    return found


def assert_label_studio_shows(
    services: Services, fake: FakeLabelStudio, version: str, unlabeled: set[int]
) -> None:
    """The project shows labelloop's one name, every unlabeled task has exactly one prediction
    of it, and each agrees with ``version``, the active one."""
    assert active_version(services) == version
    assert fake.model_version == NAME
    mine = [p["task"] for p in fake.predictions if p["model_version"] == NAME]
    assert sorted(mine) == sorted(set(mine)), "duplicate predictions"
    assert set(mine) >= unlabeled, f"tasks without a prediction: {unlabeled - set(mine)}"
    expected = active_labels(services)
    shown = {
        p["task"]: p["result"][0]["value"]["choices"][0]
        for p in fake.predictions
        if p["model_version"] == NAME and p["task"] in unlabeled
    }
    assert shown == {t: expected[t] for t in unlabeled}, f"not {version}'s predictions"


def import_tasks(services: Services, fake: FakeLabelStudio, *task_ids: int) -> None:
    """Tasks appear in Label Studio and its TASKS_CREATED webhook is folded."""
    for task_id in task_ids:
        fake.add_task(task_id, color_image(RED if task_id % 2 else BLUE, seed=task_id))
    body = {
        "action": "TASKS_CREATED",
        "project": payloads.project(),
        "tasks": [fake.tasks[t] for t in task_ids],
    }
    with services.engine.begin() as conn:
        events.append(conn, action="TASKS_CREATED", project_id=1, body=json.dumps(body))
    fold_all(services)


# -- item 3: a reinstall against a project with an earlier install's predictions -----------


async def test_a_fresh_install_never_takes_an_earlier_installs_version_name(
    services: Services, fake: FakeLabelStudio
) -> None:
    # An earlier install (its database since wiped) pushed labelloop-v1 onto tasks 7-10.
    for task_id in (7, 8, 9, 10):
        old = prediction(task_id, "red", 0.5, "labelloop-v1", "label", "image")
        fake.add_prediction(old)
    fake.model_version = "labelloop-v1"

    annotate(services, *first_six())
    worker = Worker(services)
    assert await worker.run_until_idle() == 1

    version = active_version(services)
    assert version == "labelloop-v2"  # the next free number: still readable, never a reuse
    with services.engine.begin() as conn:
        job = jobs.recent(conn, 1)[0]
    assert job.progress["pushed"] == 4  # none of the old install's counted as already pushed
    assert_label_studio_shows(services, fake, version, {7, 8, 9, 10})

    # Later versions of this install keep counting from there.
    annotate(services, *flipped("2026-11-29T11:00:00Z"))
    assert await worker.run_until_idle() == 1
    assert active_version(services) == "labelloop-v3"
    assert_label_studio_shows(services, fake, "labelloop-v3", {7, 8, 9, 10})


async def test_version_numbers_skip_every_name_label_studio_lists(engine: Engine) -> None:
    with engine.begin() as conn:
        assert models.next_version(conn, 1) == "labelloop-v1"
        taken = {"labelloop-v4", "labelloop-v2", "labelloop-vx", "their-model-v9", ""}
        assert models.next_version(conn, 1, taken) == "labelloop-v5"


# -- item 4: a stale push reverts what annotators see ---------------------------------------


async def test_a_push_queued_for_v1_during_a_retrain_pushes_the_promoted_v2(
    services: Services, fake: FakeLabelStudio, interleave: Interleave
) -> None:
    annotate(services, *first_six())
    worker = Worker(services)
    await worker.run_until_idle()
    assert active_version(services) == "labelloop-v1"

    # A retrain starts; once it has read its tasks, two tasks are imported: their
    # TASKS_CREATED queues a push while labelloop-v1 is still the active version.
    annotate(services, *flipped("2026-11-29T11:00:00Z"))
    interleave.hooks.append(once(downloading, lambda: import_tasks(services, fake, 13, 14)))
    assert await worker.run_until_idle() == 2  # the retrain, then the push

    version = active_version(services)
    assert version == "labelloop-v2"
    assert_label_studio_shows(services, fake, version, {7, 8, 9, 10, 13, 14})
    assert all(sent == NAME for sent, _ in interleave.patches), interleave.patches
    with services.engine.begin() as conn:
        push = jobs.recent(conn, 1)[0]
    assert (push.kind, push.status, push.model_version) == ("push", "succeeded", version)
    assert "labelloop-v1" in push.note  # it says what it was asked for and what it pushed


async def test_a_rollback_during_a_training_leaves_label_studio_on_the_active_version(
    services: Services, fake: FakeLabelStudio, interleave: Interleave
) -> None:
    annotate(services, *first_six())
    worker = Worker(services)
    await worker.run_until_idle()
    annotate(services, *flipped("2026-11-29T11:00:00Z"))
    await worker.run_until_idle()
    assert active_version(services) == "labelloop-v2"

    # A person rolls back to v1 while a (manual) training of v3 embeds its tasks; v3, on the
    # current labels (one more: the same ones would train nothing), beats v1 and is promoted
    # over the rollback.
    annotate(services, (107, 7, "red", "2026-11-29T11:30:00Z"))
    with services.engine.begin() as conn:
        triggers.request_training(conn, services.settings, 1, "manual")
    interleave.hooks.append(once(downloading, lambda: _activate(services, 1, "labelloop-v1")))
    assert await worker.run_until_idle() == 2

    version = active_version(services)
    assert version == "labelloop-v3"
    assert_label_studio_shows(services, fake, version, {8, 9, 10})
    assert all(sent == NAME for sent, _ in interleave.patches), interleave.patches


async def test_a_rollback_while_a_training_pushes_is_what_label_studio_ends_on(
    services: Services, fake: FakeLabelStudio, interleave: Interleave
) -> None:
    annotate(services, *first_six())
    worker = Worker(services)
    await worker.run_until_idle()

    # v2 is promoted; while its predictions are imported, a person rolls back to v1.
    annotate(services, *flipped("2026-11-29T11:00:00Z"))
    interleave.hooks.append(once(importing, lambda: _activate(services, 1, "labelloop-v1")))
    assert await worker.run_until_idle() == 2

    assert active_version(services) == "labelloop-v1"
    assert_label_studio_shows(services, fake, "labelloop-v1", {7, 8, 9, 10})
    # The training never set its v2 after the rollback: only the active one was ever set.
    assert all(sent == NAME for sent, _ in interleave.patches), interleave.patches


async def test_tasks_imported_during_the_first_training_get_its_predictions(
    services: Services, fake: FakeLabelStudio, interleave: Interleave
) -> None:
    annotate(services, *first_six())
    interleave.hooks.append(once(downloading, lambda: import_tasks(services, fake, 13, 14)))
    assert await Worker(services).run_until_idle() == 2  # the training, then the push

    assert_label_studio_shows(services, fake, "labelloop-v1", {7, 8, 9, 10, 13, 14})


async def test_a_push_with_no_active_version_is_skipped(
    services: Services, fake: FakeLabelStudio
) -> None:
    with services.engine.begin() as conn:
        jobs.enqueue(conn, 1, "new-tasks", kind="push", model_version=None)
    assert await Worker(services).run_until_idle() == 1
    with services.engine.begin() as conn:
        job = jobs.recent(conn, 1)[0]
    assert (job.status, job.error) == ("skipped", "no active version to push")
    assert fake.predictions == [] and fake.model_version == ""
