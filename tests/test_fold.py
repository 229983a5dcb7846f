"""Folding the event log into labels: idempotent, order-tolerant, and triggering on threshold."""

import json
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.fold import fold_pending
from service.settings import Settings, TrainingSettings
from storage import events, jobs, labels
from storage.tables import jobs as jobs_table
from tests import payloads


def settings(threshold: int = 3) -> Settings:
    return Settings(training=TrainingSettings(threshold=threshold))


def post(engine: Engine, *bodies: dict[str, Any], threshold: int = 3) -> list[int]:
    """Append events and fold them, as the webhook and the folder do; returns queued jobs."""
    with engine.begin() as conn:
        for body in bodies:
            events.append(conn, action=body["action"], project_id=1, body=json.dumps(body))
    with engine.begin() as conn:
        return fold_pending(conn, settings(threshold)).queued_jobs


def state(engine: Engine) -> tuple[int, dict[int, str], int]:
    with engine.begin() as conn:
        project = labels.get_project(conn, 1)
        return (
            labels.count_annotations(conn, 1),
            labels.training_labels(conn, 1),
            project.changes if project else 0,
        )


def test_redelivered_event_changes_nothing(engine: Engine) -> None:
    body = payloads.annotation_event(10, 100, "red")
    post(engine, body)
    post(engine, body)  # byte-identical: stored once
    # The same annotation again, inside a body that differs (the project's counters moved):
    # stored, folded, and still counted once.
    again = payloads.annotation_event(10, 100, "red")
    again["project"]["total_annotations_number"] = 1
    post(engine, again)
    assert state(engine) == (1, {100: "red"}, 1)
    with engine.begin() as conn:
        assert events.count(conn, 1) == 2


def test_repeated_start_training_is_not_a_duplicate(engine: Engine) -> None:
    body = {"action": "START_TRAINING", "project": payloads.project()}
    with engine.begin() as conn:
        first = events.append(conn, action="START_TRAINING", project_id=1, body=json.dumps(body))
        second = events.append(conn, action="START_TRAINING", project_id=1, body=json.dumps(body))
    assert not first.duplicate and not second.duplicate
    assert first.id != second.id


def test_newer_update_wins_and_older_is_ignored(engine: Engine) -> None:
    created = payloads.annotation_event(10, 100, "red", updated_at="2026-11-29T10:00:00Z")
    updated = payloads.annotation_event(
        10, 100, "blue", action="ANNOTATION_UPDATED", updated_at="2026-11-29T11:00:00Z"
    )
    post(engine, updated, created)  # out of order: the older create arrives last
    assert state(engine) == (1, {100: "blue"}, 1)


def test_delete_removes_and_a_late_create_does_not_resurrect(engine: Engine) -> None:
    post(engine, payloads.annotation_event(10, 100, "red"), payloads.deleted_event(10))
    assert state(engine) == (0, {}, 2)
    post(engine, payloads.annotation_event(10, 100, "red", updated_at="2026-11-29T12:00:00Z"))
    assert state(engine) == (0, {}, 2)


def test_skipped_annotation_is_not_training_data(engine: Engine) -> None:
    post(engine, payloads.annotation_event(10, 100, None, was_cancelled=True))
    assert state(engine) == (0, {}, 0)


def test_bulk_annotations_created(engine: Engine) -> None:
    body = {
        "action": "ANNOTATIONS_CREATED",
        "project": payloads.project(),
        "annotation": [payloads.annotation(i, 100 + i, "red") for i in range(3)],
        "task": [payloads.task(100 + i) for i in range(3)],
    }
    post(engine, body, threshold=10)
    assert state(engine) == (3, {100: "red", 101: "red", 102: "red"}, 3)


def test_bad_event_is_skipped_and_the_rest_folds(engine: Engine) -> None:
    bad = {"action": "ANNOTATION_CREATED", "project": payloads.project(), "annotation": "oops"}
    post(engine, bad, payloads.annotation_event(11, 101, "blue"))
    assert state(engine) == (1, {101: "blue"}, 1)
    with engine.begin() as conn:
        assert events.claim_unfolded(conn) == []


def test_unsupported_project_is_recorded_with_reason(engine: Engine) -> None:
    body = payloads.annotation_event(10, 100, "red")
    body["project"]["label_config"] = '<View><Text name="t" value="$text"/></View>'
    queued = post(engine, body, threshold=1)
    with engine.begin() as conn:
        project = labels.get_project(conn, 1)
    assert project is not None
    assert project.unsupported_reason == "no <Image> tag in the label config"
    assert queued == []


def test_threshold_queues_once_and_coalesces(engine: Engine) -> None:
    assert post(engine, *(payloads.annotation_event(i, 100 + i, "red") for i in range(2))) == []
    queued = post(engine, payloads.annotation_event(2, 102, "blue"))
    assert len(queued) == 1
    # More changes while the job waits join it instead of queuing another.
    assert post(engine, *(payloads.annotation_event(i, 100 + i, "red") for i in range(3, 7))) == []
    with engine.begin() as conn:
        job = jobs.claim(conn)
    assert job is not None and job.change_mark == 7
    # While it runs, changes reaching the threshold again queue exactly one follow-up.
    follow_up = post(engine, *(payloads.annotation_event(i, 100 + i, "blue") for i in range(7, 12)))
    assert len(follow_up) == 1
    with engine.begin() as conn:
        statuses = conn.execute(sa.select(jobs_table.c.status).order_by(jobs_table.c.id)).all()
    assert [s for (s,) in statuses] == ["running", "queued"]


@pytest.mark.parametrize("action", ["TASKS_CREATED", "PROJECT_UPDATED", "SOMETHING_NEW"])
def test_other_actions_fold_without_counting(engine: Engine, action: str) -> None:
    body = {"action": action, "project": payloads.project(), "tasks": [payloads.task(5)]}
    post(engine, body)
    assert state(engine) == (0, {}, 0)
