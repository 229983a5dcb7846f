"""Catch-up reconciles the task list that jobs read from the log (service/jobs/catchup_tasks.py)."""

import json
from typing import Any

import pytest
import sqlalchemy as sa

from service.context import Services
from service.ingest.fold_loop import fold_all
from service.jobs import catchup_tasks
from service.jobs.catchup import catch_up
from service.jobs.worker import Worker
from storage import events, jobs, labels
from storage.tables import events as events_table
from tests import payloads
from tests.fake_labelstudio import RED, FakeLabelStudio, annotate, color_image, first_six

pytestmark = pytest.mark.anyio


def alive(services: Services) -> list[int]:
    with services.engine.begin() as conn:
        return [t.id for t in labels.project_tasks(conn, 1)]


def webhook(services: Services, body: dict[str, Any]) -> None:
    """A webhook Label Studio sends, stored and folded at once."""
    with services.engine.begin() as conn:
        events.append(conn, action=body["action"], project_id=1, body=json.dumps(body))
    fold_all(services)


def tasks_event(action: str, fake: FakeLabelStudio, *task_ids: int) -> dict[str, Any]:
    tasks = [fake.tasks.get(t, {"id": t}) for t in task_ids]
    return {"action": action, "project": payloads.project(), "tasks": tasks}


async def test_a_task_whose_webhook_was_lost_is_learned_and_gets_the_active_version(
    services: Services, fake: FakeLabelStudio
) -> None:
    annotate(services, *first_six(), fake=fake)
    worker = Worker(services)
    assert await worker.run_until_idle() == 1  # labelloop-v1 is active
    fake.add_task(13, color_image(RED, seed=13))  # imported; its TASKS_CREATED never arrives
    assert 13 not in alive(services)

    report = await catch_up(services, 1)
    assert (report.tasks_saved, report.tasks_new, report.tasks_deleted) == (1, 1, 0)
    assert len(fold_all(services).queued_jobs) == 1  # a push, as TASKS_CREATED queues one
    assert 13 in alive(services)
    assert await worker.run_until_idle() == 1
    with services.engine.begin() as conn:
        job = jobs.recent(conn, 1)[0]
    assert (job.kind, job.status) == ("push", "succeeded")
    assert job.model_version == "labelloop-v1"
    # under the project's one Label Studio name, like every labelloop prediction
    assert [p["model_version"] for p in fake.predictions if p["task"] == 13] == ["labelloop"]


async def test_a_task_deleted_without_a_webhook_is_marked_deleted(
    services: Services, fake: FakeLabelStudio
) -> None:
    del fake.tasks[12]
    report = await catch_up(services, 1)
    assert (report.tasks_saved, report.tasks_deleted) == (0, 1)
    fold_all(services)
    assert alive(services) == list(range(1, 12))
    assert (await catch_up(services, 1)).tasks_deleted == 0  # once


async def test_an_unchanged_project_appends_nothing(
    services: Services, fake: FakeLabelStudio
) -> None:
    with services.engine.begin() as conn:
        before = events.last_id(conn)
    report = await catch_up(services, 1)
    assert (report.tasks_saved, report.tasks_deleted) == (0, 0)
    with services.engine.begin() as conn:
        assert events.last_id(conn) == before


async def test_a_task_created_after_the_listing_passed_is_not_deleted(
    services: Services, fake: FakeLabelStudio
) -> None:
    """Task 13 is created just after the listing read its last page, and its webhook is folded
    before catch-up compares: absent from the listing, yet alive."""
    first = fake.listings

    def importer(listing: int) -> None:
        if listing == first:  # the only page (12 tasks) has been read
            fake.add_task(13, color_image(RED, seed=13))
            webhook(services, tasks_event("TASKS_CREATED", fake, 13))

    fake.after_list = importer
    report = await catch_up(services, 1)
    fold_all(services)
    assert (report.tasks_deleted, report.kept) == (0, 1)
    assert alive(services) == list(range(1, 14))
    fake.after_list = None
    assert (await catch_up(services, 1)).tasks_saved == 0  # listed now; nothing to learn


async def test_a_task_deleted_after_the_comparison_is_not_revived(
    services: Services, fake: FakeLabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Task 13's import was never heard of; the listing sees it, then it is deleted and its
    TASKS_DELETED webhook is folded before catch-up appends the TASKS_CREATED it decided on.
    The deletion is the newer news: the task stays deleted."""
    fake.add_task(13, color_image(RED, seed=13))
    saved_events = catchup_tasks.saved_events

    def deleted_meanwhile(*args: Any) -> list[dict[str, Any]]:
        del fake.tasks[13]
        webhook(services, tasks_event("TASKS_DELETED", fake, 13))
        return saved_events(*args)

    monkeypatch.setattr(catchup_tasks, "saved_events", deleted_meanwhile)
    report = await catch_up(services, 1)
    assert report.tasks_new == 1  # what the comparison saw
    fold_all(services)
    assert 13 not in alive(services)
    with services.engine.begin() as conn:
        task = labels.get_task(conn, 13)
    assert task is not None and task.deleted


async def test_a_late_annotation_webhook_does_not_revive_a_deleted_task(
    services: Services, fake: FakeLabelStudio
) -> None:
    webhook(services, tasks_event("TASKS_DELETED", fake, 5))
    annotate(services, (105, 5, "red", "2026-11-29T10:00:00Z"))  # sent before the deletion
    assert 5 not in alive(services)


async def test_an_edited_task_is_saved_with_its_new_data(
    services: Services, fake: FakeLabelStudio
) -> None:
    fake.tasks[7]["data"] = {"image": "/data/upload/1/edited-7.png"}
    report = await catch_up(services, 1)
    assert (report.tasks_saved, report.tasks_new) == (1, 0)
    fold_all(services)
    with services.engine.begin() as conn:
        task = labels.get_task(conn, 7)
    assert task is not None and task.data == {"image": "/data/upload/1/edited-7.png"}


async def test_a_task_an_event_names_during_the_listing_is_left_to_that_event(
    services: Services, fake: FakeLabelStudio
) -> None:
    """An annotation webhook folded during the listing carries task 7's newer data; the
    listing's older copy of the task does not overwrite it."""
    newer = {"image": "/data/upload/1/newer-7.png"}
    first = fake.listings

    def annotator(listing: int) -> None:
        if listing == first:  # the page, with task 7's old data, has been read
            fake.tasks[7]["data"] = newer
            body = payloads.annotation_event(107, 7, "red", updated_at="2026-11-29T11:00:00Z")
            body["task"]["data"] = newer
            webhook(services, body)

    fake.tasks[7]["data"] = {"image": "/data/upload/1/older-7.png"}
    fake.after_list = annotator
    report = await catch_up(services, 1)
    assert report.tasks_saved == 0
    fold_all(services)
    with services.engine.begin() as conn:
        task = labels.get_task(conn, 7)
    assert task is not None and task.data == newer


async def test_many_missed_tasks_are_learned_in_events_of_at_most_100(
    unregistered: Services, fake: FakeLabelStudio
) -> None:
    for task_id in range(13, 251):
        fake.add_task(task_id, None)
    report = await catch_up(unregistered, 1)
    assert report.tasks_new == 250
    with unregistered.engine.begin() as conn:
        bodies = conn.execute(
            sa.select(events_table.c.body).where(events_table.c.action == "TASKS_CREATED")
        ).scalars()
        assert [len(json.loads(body)["tasks"]) for body in bodies] == [100, 100, 50]
    fold_all(unregistered)
    assert alive(unregistered) == list(range(1, 251))
