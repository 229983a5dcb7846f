"""A push costs what changed, under one stable name per project, and deletes only labelloop's own.

``push_predictions`` is driven with a head whose output is its input (each task's "embedding" is
the probabilities the test wants), so which predictions change between two pushes is exact.
"""

import asyncio
import json
from collections.abc import Callable
from typing import Any, ClassVar

import httpx
import pytest
import torch
from sqlalchemy.engine import Engine

from service.context import Services
from service.jobs import predictions
from service.jobs.prediction_body import prediction
from service.jobs.predictions import EPSILON, PushReport, push_predictions
from service.jobs.worker import Worker
from service.labelstudio.client import LabelStudio
from service.vision.ranking import Ranking
from service.web.control import _activate
from service.web.status import project_status
from storage import jobs, labels, models, pushed
from tests.fake_labelstudio import TOKEN, FakeLabelStudio, annotate, first_six

pytestmark = pytest.mark.anyio

NAME = "labelloop"
TOP_PROBABILITY = Ranking("least_confidence", diverse=False)
TASKS = {7, 8, 9, 10, 13}


class EchoHead:
    """A head whose probabilities are the vectors it is given: [P(blue), P(red)]."""

    labels: ClassVar[list[str]] = ["blue", "red"]

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return x


def red(p: float) -> torch.Tensor:
    return torch.tensor([1.0 - p, p])


def db_of(engine: Engine) -> Callable[..., Any]:
    async def db(fn: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            with engine.begin() as conn:
                return fn(conn, *args)

        return await asyncio.to_thread(run)

    return db


@pytest.fixture
def project(engine: Engine, fake: FakeLabelStudio) -> FakeLabelStudio:
    fake.add_task(13, None)
    with engine.begin() as conn:
        labels.save_project(conn, 1, {})
    return fake


async def push(
    engine: Engine,
    fake: FakeLabelStudio,
    version: str,
    vectors: dict[int, torch.Tensor],
    handler: Callable[[httpx.Request], httpx.Response] | None = None,
) -> PushReport:
    transport = httpx.MockTransport(handler or fake.handle)
    async with LabelStudio("http://ls.test", TOKEN, transport=transport, retries=0) as client:
        return await push_predictions(
            client,
            db_of(engine),
            1,
            version,
            EchoHead(),  # type: ignore[arg-type]
            vectors,
            from_name="label",
            to_name="image",
            tasks=set(fake.tasks),
            # The score is the top probability (what the vectors say): this file is about
            # which predictions a push rewrites, not about the score rules (test_ranking.py).
            ranking=TOP_PROBABILITY,
        )


def shown(fake: FakeLabelStudio) -> dict[int, tuple[str, float]]:
    """Task -> (label, score) of its one prediction of NAME (fails on a duplicate)."""
    mine = fake.predictions_of(NAME)
    assert all(len(p) == 1 for p in mine.values()), f"duplicates: {mine}"
    return {t: (p[0]["result"][0]["value"]["choices"][0], p[0]["score"]) for t, p in mine.items()}


def imported(fake: FakeLabelStudio) -> int:
    return sum(1 for c in fake.calls if c.endswith("/import/predictions"))


async def test_unchanged_are_skipped_changed_replaced_new_imported(
    engine: Engine, project: FakeLabelStudio
) -> None:
    fake = project
    first = await push(engine, fake, "labelloop-v1", {7: red(0.9), 8: red(0.8), 9: red(0.6)})
    assert (first.imported, first.replaced, first.unchanged) == (3, 0, 0)
    assert fake.model_version == NAME

    second = await push(
        engine,
        fake,
        "labelloop-v2",
        {
            7: red(0.9 + EPSILON / 2),  # within epsilon: left as it is
            8: red(0.3),  # label changed
            9: red(0.6 + 2 * EPSILON),  # score moved
            10: red(0.7),  # new
        },
    )
    assert (second.imported, second.replaced, second.unchanged) == (1, 2, 1)
    assert shown(fake) == {
        7: ("red", 0.9),
        8: ("blue", pytest.approx(0.7)),
        9: ("red", pytest.approx(0.6 + 2 * EPSILON)),
        10: ("red", pytest.approx(0.7)),
    }
    assert {p["model_version"] for p in fake.predictions} == {NAME}
    with engine.begin() as conn:
        rows = pushed.held(conn, 1)
    assert rows[7].version == "labelloop-v1" and rows[8].version == "labelloop-v2"
    assert not fake.listed_project_predictions()

    # Nothing changed: nothing is written.
    before = imported(fake)
    third = await push(engine, fake, "labelloop-v2", {8: red(0.3), 10: red(0.7)})
    assert (third.written, third.unchanged) == (0, 2)
    assert imported(fake) == before


async def test_an_interrupted_push_resumes_without_duplicates_and_without_a_project_listing(
    engine: Engine, project: FakeLabelStudio
) -> None:
    fake = project
    await push(engine, fake, "labelloop-v1", {7: red(0.9), 8: red(0.8)})
    crashed = False

    def crash_after_storing(request: httpx.Request) -> httpx.Response:
        """Label Studio stores the chunk; the worker dies before it hears the answer."""
        nonlocal crashed
        answer = fake.handle(request)
        if request.url.path.endswith("/import/predictions") and not crashed:
            crashed = True
            raise RuntimeError("worker killed")
        return answer

    vectors = {7: red(0.1), 8: red(0.8), 9: red(0.6), 10: red(0.4)}
    with pytest.raises(RuntimeError):
        await push(engine, fake, "labelloop-v2", vectors, crash_after_storing)
    with engine.begin() as conn:
        assert pushed.uncertain(conn, 1) == [7, 9, 10]

    # The next push (a restart) asks Label Studio about those three tasks only.
    calls = len(fake.calls)
    report = await push(engine, fake, "labelloop-v2", vectors)
    assert report.written == 0  # what the lost answer stored is adopted, not sent again
    assert shown(fake) == {
        7: ("blue", pytest.approx(0.9)),
        8: ("red", 0.8),
        9: ("red", 0.6),
        10: ("blue", pytest.approx(0.6)),
    }
    assert not fake.listed_project_predictions()
    scoped = [c for c in fake.calls[calls:] if c.startswith("GET /api/tasks/")]
    assert scoped and all("selectedItems" in httpx.URL("/?" + c.split("?", 1)[1]).params["query"]
                          for c in scoped)  # fmt: skip
    with engine.begin() as conn:
        assert pushed.uncertain(conn, 1) == []


async def test_a_503_after_storing_a_chunk_resumes_in_the_same_push(
    engine: Engine, project: FakeLabelStudio
) -> None:
    fake = project
    fake.fail_imports = 1  # stored, then the answer is lost
    await push(engine, fake, "labelloop-v1", {7: red(0.9), 8: red(0.2)})
    assert set(shown(fake)) == {7, 8}
    assert not fake.listed_project_predictions()


async def test_interruptions_do_not_end_a_push_that_keeps_making_progress(
    engine: Engine, project: FakeLabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = project
    monkeypatch.setattr(predictions, "CHUNK", 1)
    fake.fail_imports = predictions.PUSH_ROUNDS + 1  # every chunk's answer lost, once each
    await push(engine, fake, "labelloop-v1", {t: red(0.9) for t in (7, 8, 9, 10, 13)})
    assert set(shown(fake)) == {7, 8, 9, 10, 13}
    assert not fake.listed_project_predictions()


async def test_another_models_predictions_are_never_deleted(
    engine: Engine, project: FakeLabelStudio
) -> None:
    fake = project
    theirs = [
        fake.add_prediction(prediction(t, "blue", 0.5, "their-model", "label", "image"))
        for t in (7, 8)
    ]
    await push(engine, fake, "labelloop-v1", {7: red(0.9), 8: red(0.8)})
    await push(engine, fake, "labelloop-v2", {7: red(0.1), 8: red(0.2)})

    assert [p for p in fake.predictions if p["model_version"] == "their-model"] == theirs
    assert shown(fake) == {7: ("blue", pytest.approx(0.9)), 8: ("blue", pytest.approx(0.8))}
    # Their predictions were there: ours went one by one, never with the bulk action.
    assert not any(c.startswith("POST /api/dm/actions") for c in fake.calls)
    assert sum(c.startswith("DELETE /api/predictions/") for c in fake.calls) == 2
    assert not fake.listed_project_predictions()


async def test_without_another_model_the_bulk_action_replaces(
    engine: Engine, project: FakeLabelStudio
) -> None:
    fake = project
    await push(engine, fake, "labelloop-v1", {7: red(0.9), 8: red(0.8)})
    await push(engine, fake, "labelloop-v2", {7: red(0.1), 8: red(0.8)})
    assert shown(fake) == {7: ("blue", pytest.approx(0.9)), 8: ("red", 0.8)}
    assert sum(c.startswith("POST /api/dm/actions?id=delete_tasks_predictions") for c in fake.calls)
    assert not any(c.startswith("DELETE /api/predictions/") for c in fake.calls)


async def test_the_name_is_chosen_apart_from_an_earlier_installs(
    engine: Engine, project: FakeLabelStudio
) -> None:
    fake = project
    left = fake.add_prediction(prediction(9, "red", 0.5, NAME, "label", "image"))
    report = await push(engine, fake, "labelloop-v1", {7: red(0.9), 8: red(0.8)})
    assert report.label_studio_version == "labelloop-2"
    assert fake.model_version == "labelloop-2"
    assert left in fake.predictions  # not ours: never deleted
    with engine.begin() as conn:
        assert pushed.label_studio_version(conn, 1) == "labelloop-2"


async def test_a_user_deletion_and_an_ml_backend_duplicate_are_repaired(
    engine: Engine, project: FakeLabelStudio
) -> None:
    fake = project
    await push(engine, fake, "labelloop-v1", {7: red(0.9), 8: red(0.8), 9: red(0.7)})
    # An annotator deletes task 7's; ML-backend calls add a second one to tasks 8 and 9. (The
    # count check sees a difference in number: one deletion and one addition would cancel.)
    fake.predictions = [p for p in fake.predictions if p["task"] != 7]
    fake.add_prediction(prediction(8, "red", 0.81, NAME, "label", "image"))
    fake.add_prediction(prediction(9, "blue", 0.6, NAME, "label", "image"))

    report = await push(engine, fake, "labelloop-v1", {7: red(0.9), 8: red(0.8), 9: red(0.7)})
    assert report.repaired
    # The newest of each task is kept; one that disagrees with the model is then replaced.
    assert shown(fake) == {7: ("red", 0.9), 8: ("red", 0.81), 9: ("red", 0.7)}
    assert fake.listed_project_predictions()  # the repair path alone lists them
    with engine.begin() as conn:
        assert pushed.count(conn, 1) == 3


# -- through the worker: versions, old names, rollback ---------------------------------------


async def test_label_studio_holds_only_the_stable_name_after_retrains_and_old_names_go(
    services: Services, fake: FakeLabelStudio
) -> None:
    annotate(services, *first_six())
    worker = Worker(services)
    assert await worker.run_until_idle() == 1
    # An older labelloop pushed each version under its own name: its labelloop-v1 is still
    # in Label Studio, beside another model's.
    for t in (7, 8):
        fake.add_prediction(prediction(t, "red", 0.5, "labelloop-v1", "label", "image"))
    theirs = fake.add_prediction(prediction(9, "red", 0.5, "their-model", "label", "image"))
    flipped = [(a, t, "blue" if x == "red" else "red", "2026-11-29T11:00:00Z")
               for a, t, x, _ in first_six()]  # fmt: skip
    annotate(services, *flipped)
    assert await worker.run_until_idle() == 1

    assert {p["model_version"] for p in fake.predictions} == {NAME, "their-model"}
    assert theirs in fake.predictions
    assert set(shown(fake)) == {7, 8, 9, 10}
    assert fake.model_version == NAME
    with services.engine.begin() as conn:
        assert models.active(conn, 1).version == "labelloop-v2"  # type: ignore[union-attr]
        job = jobs.recent(conn, 1)[0]
    assert job.progress["label_studio_version"] == NAME
    assert not fake.listed_project_predictions()
    with services.engine.begin() as conn:
        body = project_status(conn, 1)
    assert body is not None and body["active_model"]["version"] == "labelloop-v2"
    assert body["active_model"]["label_studio_version"] == NAME


async def test_a_rollback_replaces_what_differs(services: Services, fake: FakeLabelStudio) -> None:
    annotate(services, *first_six())
    worker = Worker(services)
    await worker.run_until_idle()
    v1 = shown(fake)
    flipped = [(a, t, "blue" if x == "red" else "red", "2026-11-29T11:00:00Z")
               for a, t, x, _ in first_six()]  # fmt: skip
    annotate(services, *flipped)
    await worker.run_until_idle()
    v2 = shown(fake)
    assert {t: label for t, (label, _) in v2.items()} != {t: label for t, (label, _) in v1.items()}

    assert _activate(services, 1, "labelloop-v1") is not None
    assert await worker.run_until_idle() == 1
    back = shown(fake)
    assert {t: label for t, (label, _) in back.items()} == {t: x for t, (x, _) in v1.items()}
    assert all(abs(back[t][1] - v1[t][1]) <= EPSILON for t in v1)
    assert fake.model_version == NAME
    with services.engine.begin() as conn:
        push_job = jobs.recent(conn, 1)[0]
    assert push_job.kind == "push" and push_job.progress["pushed"] > 0
    patches = [c for c in fake.calls if c == "PATCH /api/projects/1/"]
    assert len(patches) == 1  # set once, at the first push; never again while it is NAME
    assert json.dumps(back)  # plain data


async def test_a_large_delta_costs_one_delete_one_import_and_one_names_check(
    engine: Engine, project: FakeLabelStudio
) -> None:
    """Label Studio 1.23.2 recounts every task of the project on each prediction import, so a
    push of 1,200 changes must not import (or delete) in 500-task rounds: one of each."""
    fake = project
    many = range(100, 1300)
    for t in many:
        fake.add_task(t, None)
    await push(engine, fake, "labelloop-v1", {t: red(0.9) for t in many})
    fake.calls.clear()

    report = await push(engine, fake, "labelloop-v2", {t: red(0.1) for t in many})

    assert report.replaced == len(many)
    assert imported(fake) == 1
    assert sum(c.startswith("POST /api/dm/actions?id=delete_tasks_predictions") for c in fake.calls)
    assert sum(c.startswith("POST /api/dm/actions") for c in fake.calls) == 1
    # One look at Label Studio's names before writing, one count check after.
    assert sum(c.startswith("GET /api/projects/1/model-versions/") for c in fake.calls) == 2
    assert all(label == "blue" for label, _ in shown(fake).values())


@pytest.mark.parametrize(
    ("seconds", "count", "slow"),
    [(8.3, 500, True), (7.7, 20, True), (0.7, 500, False), (4.5, 600, False), (3.9, 20, False)],
)
def test_an_import_is_slow_past_4_s_at_under_100_predictions_a_second(
    seconds: float, count: int, slow: bool
) -> None:
    """What names Label Studio's import flag in the log: the 10k-task figures are slow, 1k's
    not, nor a big import that runs at speed."""
    assert predictions.slow_import(seconds, count) is slow
