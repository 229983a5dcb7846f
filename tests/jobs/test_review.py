"""After a head retrain: suspects stored, Label Studio's review tab written (fake Label Studio)."""

import json
from typing import Any

import pytest

from service.context import Services
from service.ingest.fold_loop import fold_all
from service.jobs import review
from service.jobs.worker import Worker
from service.labelstudio.views import REVIEW_TAB
from storage import events, jobs
from storage import suspects as stored
from tests import payloads
from tests.fake_labelstudio import BLUE, RED, FakeLabelStudio, color_image

pytestmark = pytest.mark.anyio

TASKS = range(1, 41)
FLIPPED = (5, 12, 21)  # annotated with the other colour, all by annotator 7


@pytest.fixture
def fake() -> FakeLabelStudio:
    """Tasks 1-40, red (odd) or blue (even)."""
    fake = FakeLabelStudio()
    for task_id in TASKS:
        fake.add_task(task_id, color_image(RED if task_id % 2 else BLUE, seed=task_id))
    return fake


def colour(task_id: int) -> str:
    return "red" if task_id % 2 else "blue"


def label_all(services: Services) -> None:
    """Every task annotated by its colour, except FLIPPED; annotator 7 labels tasks 1-10."""
    with services.engine.begin() as conn:
        for task_id in TASKS:
            label = colour(task_id)
            if task_id in FLIPPED:
                label = "blue" if label == "red" else "red"
            body = payloads.annotation_event(1000 + task_id, task_id, label)
            body["annotation"]["completed_by"] = 7 if task_id <= 10 or task_id in FLIPPED else 8
            events.append(conn, action=body["action"], project_id=1, body=json.dumps(body))
    fold_all(services)


def listing(services: Services) -> list[dict[str, Any]]:
    with services.engine.begin() as conn:
        return stored.listing(conn, 1)


async def test_a_retrain_lists_the_flipped_annotations_and_writes_the_review_tab(
    services: Services, fake: FakeLabelStudio
) -> None:
    label_all(services)
    assert await Worker(services).run_until_idle() == 1

    found = listing(services)
    assert {s["task"] for s in found} >= set(FLIPPED), found
    assert len(found) <= 2 * len(FLIPPED), found
    assert {s["task"] for s in found[: len(FLIPPED)]} == set(FLIPPED), found
    first = found[0]
    assert first["annotation"] == 1000 + first["task"]
    assert first["predicted"] == colour(first["task"]) != first["label"]
    assert first["annotator"] == 7 and first["version"] == "labelloop-v1"
    assert [s["score"] for s in found] == sorted((s["score"] for s in found), reverse=True)
    assert all(0.0 <= s["score"] <= 1.0 for s in found)

    [tab] = [v for v in fake.views.values() if v["data"]["title"] == REVIEW_TAB]
    [item] = tab["data"]["filters"]["items"]
    assert item["value"] == ",".join(str(s["annotation"]) for s in found)

    with services.engine.begin() as conn:
        rates = {r["annotator"]: r for r in stored.annotator_rates(conn, 1)}
        [job] = jobs.recent(conn, 1, 1)
    assert job.progress["suspects"] == len(found)
    assert rates[7]["annotations"] == 12 and rates[8]["annotations"] == 28
    assert rates[7]["rate"] > rates[8]["rate"]

    # A reviewer fixes one: it leaves the queue at once, without a retrain.
    fixed = FLIPPED[0]
    body = payloads.annotation_event(
        1000 + fixed, fixed, colour(fixed), action="ANNOTATION_UPDATED",
        updated_at="2026-11-29T12:00:00.000000Z",
    )  # fmt: skip
    with services.engine.begin() as conn:
        events.append(conn, action=body["action"], project_id=1, body=json.dumps(body))
    fold_all(services)
    assert fixed not in {s["task"] for s in listing(services)}


async def test_a_label_studio_that_refuses_the_tab_does_not_fail_the_job(
    services: Services, fake: FakeLabelStudio, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_views = True
    label_all(services)
    assert await Worker(services).run_until_idle() == 1
    with services.engine.begin() as conn:
        [job] = jobs.recent(conn, 1, 1)
    assert job.status == "succeeded", job.error
    assert {s["task"] for s in listing(services)} >= set(FLIPPED)
    assert "tab was not written" in caplog.text
    assert fake.views == {}


async def test_the_review_folds_follow_the_retrains_near_duplicate_groups(
    services: Services, fake: FakeLabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies of one picture share a fold, as in the retrain's held-out split, so they cannot
    vouch for each other's label (service/vision/suspects.py)."""
    fake.files[fake.tasks[3]["data"]["image"]] = fake.files[fake.tasks[1]["data"]["image"]]
    label_all(services)
    seen: dict[str, Any] = {}
    real = review.suspects

    def spy(x: Any, labels: Any, task_ids: Any, **options: Any) -> Any:
        seen.update(task_ids=list(task_ids), **options)
        return real(x, labels, task_ids, **options)

    monkeypatch.setattr(review, "suspects", spy)
    assert await Worker(services).run_until_idle() == 1

    split = dict(zip(seen["task_ids"], seen["split_ids"], strict=True))
    assert split[3] == split[1] == 1  # the same picture: task 1's group
    assert split[2] == 2
