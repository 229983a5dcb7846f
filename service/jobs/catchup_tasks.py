"""Catch-up's reconcile of the task list: which tasks exist, and what each one's data is.

Jobs read the project's tasks from the folded log (TASKS_CREATED and TASKS_DELETED webhooks,
the task of every annotation event), not from Label Studio. A webhook can be lost, and Label
Studio sends none when a task's data is edited, so every catch-up compares its listing with the
tasks the log holds and appends what differs, as events the fold applies like webhooks:

- a task listed that the log lacks, or holds with other data: ``TASKS_CREATED`` with the task
  as listed (so a lost import is learned, its predictions pushed, and a changed image URI is
  fetched again by the next job);
- a live task the listing lacks: ``TASKS_DELETED``.

The race rule is catchup.py's: a task that an event after the listing's start names (created,
deleted, or the task of an annotation) is left to that event, never judged by the listing. A
task created while the listing ran is therefore alive, and a listing older than a task's edit
or deletion does not undo it. A deleted task is never revived (Label Studio never reuses an id),
so a listing that saw a task just before it was deleted cannot bring it back either.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from storage import labels

# Tasks per TASKS_CREATED / TASKS_DELETED event (the fold applies an event in one go).
TASKS_PER_EVENT = 100


@dataclass
class TaskDiff:
    saved: list[dict[str, Any]] = field(default_factory=list)  # {"id", "data"}, new or changed
    new: int = 0  # of ``saved``, tasks the log did not have at all
    gone: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # absent, but named since the listing began


def compare(
    conn: Connection, project_id: int, listed: Mapping[int, Any], named: set[int]
) -> TaskDiff:
    """What the log must learn from the listing (task id -> data); ``named``: the task ids
    that events after the listing's start name."""
    local = labels.task_states(conn, project_id)
    diff = TaskDiff()
    for task_id in sorted(listed):
        if task_id in named:
            continue
        stored = local.get(task_id)
        if stored is None or (not stored[1] and stored[0] != listed[task_id]):
            diff.saved.append({"id": task_id, "data": listed[task_id]})
            diff.new += stored is None
    absent = sorted(i for i, (_, deleted) in local.items() if not deleted and i not in listed)
    diff.gone = [i for i in absent if i not in named]
    diff.kept = [i for i in absent if i in named]
    return diff


def saved_events(project: dict[str, Any], diff: TaskDiff, mark: int) -> list[dict[str, Any]]:
    """TASKS_CREATED events for ``diff.saved``. ``mark`` (the listing's start) makes each
    listing's bodies its own: a task edited back to earlier data is not deduplicated away."""
    return [
        {"action": "TASKS_CREATED", "project": project, "tasks": chunk, "listed_after": mark}
        for chunk in _chunks(diff.saved, TASKS_PER_EVENT)
    ]


def deleted_events(project: dict[str, Any], diff: TaskDiff, mark: int) -> list[dict[str, Any]]:
    """TASKS_DELETED events for ``diff.gone``."""
    return [
        {
            "action": "TASKS_DELETED",
            "project": project,
            "tasks": [{"id": i} for i in chunk],
            "listed_after": mark,
        }
        for chunk in _chunks(diff.gone, TASKS_PER_EVENT)
    ]


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
