"""Folding the event log into labels: idempotent, order-tolerant, and triggering on threshold."""

import json
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.ingest.fold import fold_pending
from service.settings import Settings, TrainingSettings
from storage import events, jobs, labels
from storage.tables import annotations as annotations_table
from storage.tables import events as events_table
from storage.tables import jobs as jobs_table
from storage.tables import projects as projects_table
from storage.tables import tasks as tasks_table
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


def test_a_value_the_database_refuses_skips_only_its_event(engine: Engine) -> None:
    # Postgres refuses an updated_at longer than its column (SQLite stores it): the batch is
    # folded again event by event, and only that event is skipped. (Labels are text since
    # several Choices are encoded in them: any length fits.)
    too_long = "2026-11-29T10:00:00.000000Z" + "0" * 100
    bodies = [
        payloads.annotation_event(10, 100, "red"),
        payloads.annotation_event(11, 101, "red", updated_at=too_long),
        payloads.annotation_event(12, 102, "blue"),
    ]
    post(engine, *bodies, threshold=10)
    expected = {100: "red", 102: "blue"}
    if engine.dialect.name == "sqlite":
        expected[101] = "red"
    assert state(engine) == (len(expected), expected, len(expected))
    with engine.begin() as conn:
        assert events.claim_unfolded(conn) == []


CONFIGS = [
    payloads.LABEL_CONFIG,
    payloads.LABEL_CONFIG.replace('name="label"', 'name="colour"'),
    '<View><Text name="t" value="$text"/></View>',
]


def random_event(rng: random.Random, seq: int) -> dict[str, Any]:
    """Any event of a small world (2 projects, 8 tasks, 12 annotations), so that they collide."""
    project_id = rng.choice([1, 2])
    project = payloads.project(project_id, rng.choice(CONFIGS))
    kind = rng.random()
    if kind < 0.6:
        when = f"2026-11-29T10:{rng.randrange(6):02d}:00.000000Z"
        label = rng.choice(["red", "blue", None])
        body = payloads.annotation_event(
            rng.randrange(12),
            rng.randrange(8),
            label,
            action=rng.choice(["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]),
            project_id=project_id,
            updated_at=when,
            was_cancelled=label is None and rng.random() < 0.5,
        )
        if rng.random() < 0.3:  # the same choice under the other control name
            for item in body["annotation"]["result"]:
                item["from_name"] = "colour"
    elif kind < 0.75:
        body = payloads.deleted_event(*rng.sample(range(12), 2), project_id=project_id)
    else:
        action = rng.choice(["TASKS_CREATED", "TASKS_DELETED", "PROJECT_UPDATED"])
        tasks = [payloads.task(t, project_id) for t in rng.sample(range(8), 2)]
        body = {"action": action, "tasks": tasks}
    body["project"] = project
    body["seq"] = seq  # every body differs: none is deduplicated away
    return body


def label_state(engine: Engine) -> list[list[tuple[Any, ...]]]:
    with engine.begin() as conn:
        return [
            [tuple(row) for row in conn.execute(sa.select(*columns).order_by(columns[0]))]
            for columns in (
                [c for c in projects_table.c if c.name != "updated_at"],
                list(tasks_table.c),
                list(annotations_table.c),
            )
        ]


def test_one_batch_folds_exactly_like_one_event_at_a_time(engine: Engine) -> None:
    rng = random.Random(20261129)
    bodies = [random_event(rng, seq) for seq in range(300)]
    with engine.begin() as conn:
        for body in bodies:
            events.append(conn, action=body["action"], project_id=None, body=json.dumps(body))
    with engine.begin() as conn:
        assert fold_pending(conn, settings(10**6), limit=1000).events == 300
    in_one_batch = label_state(engine)

    with engine.begin() as conn:
        for table in (projects_table, tasks_table, annotations_table):
            conn.execute(table.delete())
        conn.execute(sa.update(events_table).values(folded=False))
    for _ in range(300):
        with engine.begin() as conn:
            assert fold_pending(conn, settings(10**6), limit=1).events == 1
    assert label_state(engine) == in_one_batch
    assert len(in_one_batch[2]) > 5  # the world is not trivially empty


def test_unfolded_events_are_found_through_the_partial_index(engine: Engine) -> None:
    # The folder asks for unfolded events after every commit; without the partial index each
    # ask scans the whole log. ("folded IS false" does not match the index; "= false" does.)
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "FROM events" in statement:
            seen.append((statement, parameters))

    with engine.begin() as conn:
        sa.event.listen(conn, "before_cursor_execute", capture)
        events.claim_unfolded(conn)
        sa.event.remove(conn, "before_cursor_execute", capture)
        [(statement, parameters)] = seen
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
        else:
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
    assert "ix_events_unfolded" in str(plan)


def test_concurrent_folders_fold_each_event_once(engine: Engine) -> None:
    # Replicas fold the same log. Each batch is read, then written in sets, so two folders at
    # once would both count the same new annotations; the fold lock makes them take turns.
    with engine.begin() as conn:
        for i in range(400):
            body = payloads.annotation_event(i, 1000 + i, "red")
            events.append(conn, action=body["action"], project_id=1, body=json.dumps(body))

    def folder() -> int:
        folded = 0
        while True:
            with engine.begin() as conn:
                batch = fold_pending(conn, settings(10**6), limit=25).events
            if not batch:
                return folded
            folded += batch

    with ThreadPoolExecutor(max_workers=3) as pool:
        counts = list(pool.map(lambda _: folder(), range(3)))
    assert sum(counts) == 400
    assert state(engine)[0::2] == (400, 400)
