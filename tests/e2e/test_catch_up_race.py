"""Catch-up races annotators: a listing runs while they create, relabel and delete, and while
tasks are deleted. labelloop must end with exactly Label Studio's annotations."""

from __future__ import annotations

import sys
import time
from typing import Any

import sqlalchemy as sa
from test_loop import LABEL_CONFIG

TASKS = 170
CATCH_UP_EVERY = "2s"  # back to back: a listing of 170 tasks with annotations takes about that
ANNOTATED = 150  # on the old code, 150 were enough to lose 81 of them


def test_catch_up_every_two_seconds_while_annotating_loses_nothing(
    label_studio: Any, labelloop_serve: Any, poll_until: Any
) -> None:
    ls = label_studio
    project_id = ls.create_project("labelloop e2e catch-up race", LABEL_CONFIG)
    imported = ls.client.post(
        f"/api/projects/{project_id}/import",
        json=[{"image": f"https://example.invalid/{i}.png"} for i in range(TASKS)],
    )
    assert imported.status_code == 201, imported.text
    task_ids = sorted(t["id"] for t in ls.tasks(project_id))
    assert len(task_ids) == TASKS

    ll = labelloop_serve(
        project_id, threshold=100_000, settings={"label_studio": {"catch_up": CATCH_UP_EVERY}}
    )
    done = ll.run_cli("register", "--project", str(project_id))
    assert done.returncode == 0, (done.stdout, done.stderr)

    started = time.monotonic()
    created: list[int] = []
    alive: set[int] = set()
    catch_ups: set[str] = set()  # distinct caught_up_at values seen while annotating
    for n, task_id in enumerate(task_ids[:ANNOTATED]):
        annotation = ls.annotate(task_id, "red" if n % 2 else "blue")
        created.append(annotation["id"])
        alive.add(annotation["id"])
        if n % 7 == 3 and created[n - 2] in alive:
            ls.relabel(created[n - 2], "red")
        if n % 11 == 5 and created[n - 4] in alive:
            ls.delete_annotation(created[n - 4])
            alive.discard(created[n - 4])
        if n % 50 == 25:  # the task and its annotation go: later tasks move up a page
            ls.client.delete(f"/api/tasks/{task_ids[n - 20]}/").raise_for_status()
            alive.discard(created[n - 20])
        catch_ups.add(_caught_up_at(ll, project_id))
    annotating = time.monotonic() - started
    print(
        f"\n{len(created)} annotations in {annotating:.1f} s, "
        f"{len(catch_ups) - 1} catch-ups meanwhile",
        file=sys.stderr,
    )
    assert len(catch_ups) > 3, "the catch-ups did not overlap the annotating"

    truth = _label_studio_annotations(ls, project_id)
    assert set(truth) == alive

    # Two catch-ups that began after the last change: what they believe about absence is final.
    finished = _caught_up_at(ll, project_id)
    poll_until(lambda: _caught_up_at(ll, project_id) > finished, 60, "a catch-up after the end")
    finished = _caught_up_at(ll, project_id)
    poll_until(lambda: _caught_up_at(ll, project_id) > finished, 60, "a second catch-up")

    mine = _labelloop_annotations(ll)
    missing = sorted(set(truth) - set(mine))
    extra = sorted(set(mine) - set(truth))
    wrong = sorted(i for i in set(truth) & set(mine) if truth[i] != mine[i])
    assert not missing, f"{len(missing)} of Label Studio's annotations deleted here: {missing}"
    assert not extra, f"{len(extra)} annotations alive here, gone in Label Studio: {extra}"
    assert not wrong, f"{len(wrong)} annotations with another label here: {wrong}"
    assert ll.status()["annotations"] == len(truth)


def _label_studio_annotations(ls: Any, project_id: int) -> dict[int, str]:
    """annotation id -> label of every annotation Label Studio holds, one by one."""
    return {
        int(a["id"]): a["result"][0]["value"]["choices"][0]
        for task in ls.tasks(project_id, fields="all")
        for a in task.get("annotations") or []
    }


def _engine(ll: Any) -> sa.Engine:
    return sa.create_engine(ll.settings["database"]["url"])


def _labelloop_annotations(ll: Any) -> dict[int, str]:
    """annotation id -> label of every live annotation in labelloop's folded state."""
    engine = _engine(ll)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, label FROM annotations WHERE NOT deleted"))
            return {int(i): str(label) for i, label in rows}
    finally:
        engine.dispose()


def _caught_up_at(ll: Any, project_id: int) -> str:
    engine = _engine(ll)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT caught_up_at FROM projects WHERE id = :id")
            return str(conn.execute(query, {"id": project_id}).scalar_one() or "")
    finally:
        engine.dispose()
