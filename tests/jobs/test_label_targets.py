"""Label configs beyond one single-choice Choices, through the whole pipeline (fake Label Studio):
a nested image key, several Choices on one image, multiple choice."""

import dataclasses
import json
from typing import Any

import pytest

from service.context import Services
from service.ingest.fold_loop import fold_all
from service.jobs.predictor import Predictor
from service.jobs.worker import Worker
from storage import events, jobs, labels, models, suspects
from tests import payloads
from tests.fake_labelstudio import BLUE, RED, FakeLabelStudio, color_image

pytestmark = pytest.mark.anyio

NESTED = (
    '<View><Image name="image" value="$item.img"/>'
    '<Choices name="label" toName="image"><Choice value="red"/><Choice value="blue"/></Choices>'
    "</View>"
)
TWO_CHOICES = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="label" toName="image"><Choice value="red"/><Choice value="blue"/></Choices>'
    '<Choices name="shade" toName="image"><Choice value="warm"/><Choice value="cool"/></Choices>'
    "</View>"
)
MULTIPLE = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="tags" toName="image" choice="multiple">'
    '<Choice value="red"/><Choice value="blue"/><Choice value="square"/></Choices>'
    "</View>"
)


def item(from_name: str, *chosen: str) -> dict[str, Any]:
    return {
        "type": "choices",
        "from_name": from_name,
        "to_name": "image",
        "origin": "manual",
        "value": {"choices": list(chosen)},
    }


def post(services: Services, fake: FakeLabelStudio, task_id: int, result: list[Any]) -> None:
    """An ANNOTATION_CREATED webhook for the task, as Label Studio sends it under the fake's
    config and task data, folded."""
    body = payloads.annotation_event(100 + task_id, task_id, None)
    body["project"]["label_config"] = fake.label_config
    body["task"]["data"] = fake.tasks[task_id]["data"]
    body["annotation"]["result"] = result
    with services.engine.begin() as conn:
        events.append(conn, action=body["action"], project_id=1, body=json.dumps(body))
    fold_all(services)


def red(task_id: int) -> bool:
    return task_id % 2 == 1


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> FakeLabelStudio:
    """Tasks 1-10, red (odd) or blue (even), under the test's config (the indirect param)."""
    config = str(request.param)
    fake = FakeLabelStudio(label_config=config)
    for task_id in range(1, 11):
        fake.add_task(task_id, color_image(RED if red(task_id) else BLUE, seed=task_id))
        if config == NESTED:  # {"item": {"img": url}}: value="$item.img"
            fake.tasks[task_id]["data"] = {"item": {"img": fake.tasks[task_id]["data"]["image"]}}
    return fake


def predicted(fake: FakeLabelStudio) -> dict[int, dict[str, list[str]]]:
    """Task id -> {from_name: choices} of the pushed predictions."""
    return {
        p["task"]: {r["from_name"]: r["value"]["choices"] for r in p["result"]}
        for p in fake.predictions
    }


@pytest.mark.parametrize("fake", [NESTED], indirect=True)
async def test_a_nested_image_key_reads_the_image_as_label_studio_does(
    services: Services, fake: FakeLabelStudio
) -> None:
    for task_id in range(1, 7):
        post(services, fake, task_id, [item("label", "red" if red(task_id) else "blue")])
    assert await Worker(services).run_until_idle() == 1
    with services.engine.begin() as conn:
        failures = labels.image_failures(conn, 1)
        active = models.active(conn, 1)
    assert failures == []  # before: "task data has no 'item.img' image", for every task
    assert active is not None and active.trained_on == 6
    assert sorted(predicted(fake)) == [7, 8, 9, 10]


@pytest.mark.parametrize("fake", [TWO_CHOICES], indirect=True)
async def test_two_choices_train_a_head_each_and_predict_one_result_per_tag(
    services: Services, fake: FakeLabelStudio
) -> None:
    for task_id in range(1, 7):
        colour, shade = ("red", "warm") if red(task_id) else ("blue", "cool")
        post(services, fake, task_id, [item("label", colour), item("shade", shade)])
    assert await Worker(services).run_until_idle() == 1
    with services.engine.begin() as conn:
        active = models.active(conn, 1)
    assert active is not None
    assert sorted(active.labels) == ["label: blue", "label: red", "shade: cool", "shade: warm"]
    shown = predicted(fake)
    assert sorted(shown) == [7, 8, 9, 10]
    for task_id, answer in shown.items():
        assert sorted(answer) == ["label", "shade"]  # one result per Choices tag
        assert answer["label"][0] in ("red", "blue") and answer["shade"][0] in ("warm", "cool")
        assert ("warm" if answer["label"] == ["red"] else "cool") == answer["shade"][0]
        del task_id
    assert all(0.0 <= p["score"] <= 1.0 for p in fake.predictions)
    right = sum(answer["label"] == ["red" if red(t) else "blue"] for t, answer in shown.items())
    assert right >= 3
    # Label combinations are no classes for confident learning: no review queue (yet).
    with services.engine.begin() as conn:
        job = jobs.recent(conn, 1)[0]
        assert suspects.listing(conn, 1) == []
    assert job.status == "succeeded" and "suspects" not in (job.progress or {})


@pytest.mark.parametrize("fake", [MULTIPLE], indirect=True)
async def test_multiple_choice_predicts_several_choices(
    services: Services, fake: FakeLabelStudio
) -> None:
    for task_id in range(1, 7):
        post(services, fake, task_id, [item("tags", "red" if red(task_id) else "blue", "square")])
    assert await Worker(services).run_until_idle() == 1
    with services.engine.begin() as conn:
        stored = labels.training_labels(conn, 1)
    assert stored[1] == '{"tags":["red","square"]}'  # canonical: the config's order
    shown = predicted(fake)
    assert sorted(shown) == [7, 8, 9, 10]
    assert all("square" in answer["tags"] for answer in shown.values())
    assert any(len(answer["tags"]) >= 2 for answer in shown.values())
    assert all(0.0 <= p["score"] <= 1.0 for p in fake.predictions)


@pytest.mark.parametrize("fake", [TWO_CHOICES], indirect=True)
async def test_a_tag_without_two_classes_skips_the_job_and_names_it(
    services: Services, fake: FakeLabelStudio
) -> None:
    for task_id in range(1, 7):
        post(services, fake, task_id, [item("label", "red" if red(task_id) else "blue"),
                                       item("shade", "warm")])  # fmt: skip
    await Worker(services).run_until_idle()
    with services.engine.begin() as conn:
        [job] = jobs.recent(conn, 1)
    assert job.status == "skipped"
    assert job.error == '<Choices name="shade"> needs labels of at least two classes'


@pytest.mark.parametrize("fake", [MULTIPLE], indirect=True)
async def test_finetune_mode_refuses_several_choices_with_a_clear_error(
    services: Services, fake: FakeLabelStudio
) -> None:
    training = dataclasses.replace(services.settings.training, mode="finetune")
    services.settings = dataclasses.replace(services.settings, training=training)
    for task_id in range(1, 7):
        post(services, fake, task_id, [item("tags", "red" if red(task_id) else "blue")])
    await Worker(services).run_until_idle()
    with services.engine.begin() as conn:
        [job] = jobs.recent(conn, 1)
    assert (job.kind, job.status) == ("finetune", "skipped")
    assert job.error.startswith("finetune supports a single single-choice Choices; use mode = head")
    assert fake.predictions == []


@pytest.mark.parametrize("fake", [TWO_CHOICES], indirect=True)
async def test_predict_answers_one_result_per_tag(
    services: Services, fake: FakeLabelStudio
) -> None:
    for task_id in range(1, 7):
        colour, shade = ("red", "warm") if red(task_id) else ("blue", "cool")
        post(services, fake, task_id, [item("label", colour), item("shade", shade)])
    await Worker(services).run_until_idle()
    [answer] = await Predictor(services).predict(1, [fake.tasks[7]])
    assert sorted(r["from_name"] for r in answer["result"]) == ["label", "shade"]
    assert answer["model_version"] == "labelloop" and 0.0 <= answer["score"] <= 1.0


@pytest.mark.parametrize("fake", [payloads.LABEL_CONFIG], indirect=True)
async def test_a_push_after_the_config_gained_a_tag_waits_for_the_retrain(
    services: Services, fake: FakeLabelStudio
) -> None:
    for task_id in range(1, 7):
        post(services, fake, task_id, [item("label", "red" if red(task_id) else "blue")])
    worker = Worker(services)
    await worker.run_until_idle()
    before = [dict(p) for p in fake.predictions]
    fake.label_config = TWO_CHOICES  # the old head knows nothing of "shade"
    with services.engine.begin() as conn:
        jobs.enqueue(conn, 1, "manual", kind="push")
    await worker.run_until_idle()
    with services.engine.begin() as conn:
        push = next(j for j in jobs.recent(conn, 1) if j.kind == "push")
    assert push.status == "skipped"
    assert push.error.startswith("the active version was trained for other Choices tags")
    assert fake.predictions == before  # nothing half-right was written
    assert await Predictor(services).predict(1, [fake.tasks[7]]) == []
