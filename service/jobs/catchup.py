"""Catch-up: fold in whatever the webhooks missed, from Label Studio's own records.

Label Studio sends each webhook once, with no retry: while labelloop is down, restarting or
deploying, annotations are lost to the log; and a project annotated before ``labelloop
register`` was never in it. On start, on a schedule, on ``register`` and on the first sight of a
project, labelloop pages through the project's tasks with their annotations and appends what
differs as events of source ``catch-up``: an annotation it lacks or holds an older version of,
and one it holds that Label Studio no longer has (deleted). The folder then folds them like any
webhook, so counts come back to Label Studio's truth and the threshold fires if it was crossed.

A listing takes time (about 30 s for 10,000 tasks) and annotators go on meanwhile. Absence is
only believed of what cannot have changed since the listing began:

- tasks are paged by id (``iter_tasks``), so a task deleted mid-listing hides no other task;
- an annotation is declared deleted only if no event after the listing's start names it: one
  created (or changed) after the listing passed its task is missing from the listing, yet alive.

Deletions that webhooks report are folded at once, as ever; a deletion made during a listing and
missed by its webhook waits for the next catch-up.

The same listing reconciles the task list, which jobs read from the log (catchup_tasks.py): a
task whose TASKS_CREATED webhook was lost is learned (and gets the active version's predictions),
one deleted unheard is marked deleted, and a task whose data changed is saved again.

What a catch-up appends goes in bounded batches, each its own short transaction, so webhooks
commit between them (SQLite has one writer) and no batch nears the busy timeout.
"""

import asyncio
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from service.context import Services
from service.ingest.fold_loop import fold_all
from service.ingest.payloads import BAD_EVENT, parse_json, read_event
from service.jobs import catchup_tasks
from service.labelstudio.errors import LabelStudioError
from service.labelstudio.labelconfig import project_row
from storage import events, labels
from storage.db import reading, utcnow

logger = logging.getLogger(__name__)

# Events appended per transaction: SQLite's write lock is held for one batch at a time.
APPEND_BATCH = 500
# Annotation ids per ANNOTATIONS_DELETED event (the fold applies an event in one go).
DELETED_PER_EVENT = 100


@dataclass(frozen=True)
class CatchUpReport:
    project_id: int
    changed: int  # created or updated annotations the log did not have
    deleted: int
    kept: int = 0  # absent from the listing but changed since it began: not deleted
    tasks_saved: int = 0  # tasks new to the log, or whose data changed
    tasks_new: int = 0  # of those, tasks the log did not have (a lost TASKS_CREATED)
    tasks_deleted: int = 0


async def catch_up_all(services: Services) -> list[CatchUpReport]:
    """Catch up every supported project known here or named in settings; failures are logged
    (Label Studio may be down too) and do not stop the others."""

    def project_ids() -> list[int]:
        with reading(services.engine) as conn:
            known = {p.id for p in labels.list_projects(conn) if not p.unsupported_reason}
        return sorted(known | set(services.settings.projects))

    return await _catch_up_each(services, await asyncio.to_thread(project_ids))


async def catch_up_new(services: Services) -> list[CatchUpReport]:
    """Catch up the projects never caught up (first seen through a webhook): their
    annotations from before the webhook existed are learned within one interval."""

    def project_ids() -> list[int]:
        with reading(services.engine) as conn:
            return labels.never_caught_up(conn)

    return await _catch_up_each(services, await asyncio.to_thread(project_ids))


async def _catch_up_each(services: Services, project_ids: Sequence[int]) -> list[CatchUpReport]:
    reports = []
    for project_id in project_ids:
        try:
            reports.append(await catch_up(services, project_id))
        except Exception as exc:
            logger.warning("catch-up of project %d failed: %s", project_id, exc)
            if isinstance(exc, LabelStudioError):
                services.metrics.label_studio_error(exc)
    return reports


async def learn(services: Services, project_id: int) -> CatchUpReport:
    """Catch the project up and fold the result now, so that what follows (a status report, a
    training) sees Label Studio's annotations. What ``register`` and the first sight of a
    project wait on. Raises LabelStudioError (the project row exists once the project itself
    was read)."""
    report = await catch_up(services, project_id)
    async with services.write_turn():
        folded = await asyncio.to_thread(fold_all, services)
    if folded.queued_jobs:
        services.jobs_queued.set()
    return report


async def learn_if_new(services: Services, project_id: int) -> str | None:
    """Before a report or a training: learn a project never caught up (first seen now, or
    through a webhook). Returns None when the caller may go on, else why the project is unknown
    (neither here nor in Label Studio). A failure for a project known here is logged, not
    returned: what the webhooks brought is still there to report or train on."""

    def stored() -> Any:
        with reading(services.engine) as conn:
            return labels.get_project(conn, project_id)

    known = await asyncio.to_thread(stored)
    if known is not None and known.caught_up_at is not None:
        return None
    try:
        await learn(services, project_id)
    except LabelStudioError as exc:
        services.metrics.label_studio_error(exc)
        if known is None and await asyncio.to_thread(stored) is None:
            return f"project {project_id} unknown here and in Label Studio: {exc}"
        logger.warning("could not catch up project %d first: %s", project_id, exc)
    return None


async def catch_up(
    services: Services,
    project_id: int,
    *,
    page_size: int = 100,
    batch: int = APPEND_BATCH,
) -> CatchUpReport:
    client = services.label_studio
    project = await client.get_project(project_id)
    # Every event after this one may describe a change the listing below did not see.
    mark = await asyncio.to_thread(_last_event_id, services)
    await _write(services, _ensure_project, project_id, project)
    remote: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
    listed: dict[int, Any] = {}  # task id -> data
    async for task in client.iter_tasks(project_id, page_size=page_size, with_annotations=True):
        listed[int(task["id"])] = task.get("data") or {}
        for annotation in task.get("annotations") or []:
            remote[int(annotation["id"])] = (annotation, task)

    found = await asyncio.to_thread(_compare, services, project_id, remote, listed, mark)
    changed, gone, kept, tasks = found
    bodies = catchup_tasks.saved_events(project, tasks, mark)
    bodies += [_annotation_event(project, annotation, task) for annotation, task in changed]
    bodies += [_deleted_event(project, ids) for ids in _chunks(gone, DELETED_PER_EVENT)]
    bodies += catchup_tasks.deleted_events(project, tasks, mark)
    for chunk in _chunks(bodies, batch):
        await _write(services, _append, project_id, chunk)
        services.event_writer.notify_appended()  # folded while the next batch is written
    await _write(services, _mark_caught_up, project_id)
    report = CatchUpReport(
        project_id,
        len(changed),
        len(gone),
        len(kept) + len(tasks.kept),
        tasks_saved=len(tasks.saved),
        tasks_new=tasks.new,
        tasks_deleted=len(tasks.gone),
    )
    if report.changed or report.deleted or report.kept or tasks.saved or tasks.gone:
        logger.info(
            "catch-up of project %d: %d annotations created or updated, %d deleted; "
            "%d tasks saved (%d new), %d deleted; %d absent but changed during the listing "
            "(kept)",
            project_id,
            report.changed,
            report.deleted,
            report.tasks_saved,
            report.tasks_new,
            report.tasks_deleted,
            report.kept,
        )
    return report


def _compare(
    services: Services,
    project_id: int,
    remote: dict[int, tuple[dict[str, Any], dict[str, Any]]],
    listed: dict[int, Any],
    mark: int,
) -> tuple[
    list[tuple[dict[str, Any], dict[str, Any]]], list[int], list[int], catchup_tasks.TaskDiff
]:
    """What to append: (annotation, task) pairs the log lacks or holds older, ids to delete,
    ids absent from the listing that an event after ``mark`` names (kept), and the tasks to
    save or delete."""
    with reading(services.engine) as conn:  # one snapshot: folded rows and the events behind
        local = labels.annotation_states(conn, project_id)
        changed = [
            remote[annotation_id]
            for annotation_id in sorted(remote)
            if _missing_or_older(local.get(annotation_id), remote[annotation_id][0])
        ]
        absent = {i for i, (_, deleted) in local.items() if not deleted and i not in remote}
        named_annotations, named_tasks = _named_since(conn, project_id, mark)
        tasks = catchup_tasks.compare(conn, project_id, listed, named_tasks)
    kept = absent & named_annotations
    return changed, sorted(absent - kept), sorted(kept), tasks


def _named_since(conn: Connection, project_id: int, mark: int) -> tuple[set[int], set[int]]:
    """Annotation ids and task ids that the project's events after ``mark`` create, change or
    delete (a task is named by its annotations' events too)."""
    annotations: set[int] = set()
    tasks: set[int] = set()
    for event_id, action, body in events.since(conn, project_id, mark):
        try:
            event = read_event(event_id, action, parse_json(body))
        except (*BAD_EVENT, RecursionError):
            continue  # the fold skips it too
        if event is not None:
            annotations.update(a.id for a in event.annotations)
            annotations.update(event.deleted_annotations)
            tasks.update(t["id"] for t in event.tasks)
            tasks.update(a.task_id for a in event.annotations)
            tasks.update(event.deleted_tasks)
    return annotations, tasks


async def _write(services: Services, fn: Callable[..., Any], *args: Any) -> Any:
    """One short write transaction; on SQLite in turn with this process's other writers."""

    def run() -> Any:
        with services.engine.begin() as conn:
            return fn(conn, *args)

    async with services.write_turn():
        return await asyncio.to_thread(run)


def _last_event_id(services: Services) -> int:
    with reading(services.engine) as conn:
        return events.last_id(conn)


def _ensure_project(conn: Connection, project_id: int, project: dict[str, Any]) -> None:
    """A project first seen here gets its row now: it is known (status answers) even before
    its events are folded, and when it has none."""
    labels.add_project(conn, project_id, project_row(project))


def _append(conn: Connection, project_id: int, bodies: Sequence[dict[str, Any]]) -> None:
    rows = [(body["action"], project_id, json.dumps(body)) for body in bodies]
    events.append_many(conn, rows, source="catch-up")


def _mark_caught_up(conn: Connection, project_id: int) -> None:
    labels.mark_caught_up(conn, project_id, utcnow())


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _missing_or_older(local: tuple[str, bool] | None, annotation: dict[str, Any]) -> bool:
    if local is None:
        return True
    updated_at, deleted = local
    return not deleted and labels.is_newer(_timestamp(annotation), updated_at)


def _timestamp(annotation: dict[str, Any]) -> str:
    return str(annotation.get("updated_at") or annotation.get("created_at") or "")


def _annotation_event(
    project: dict[str, Any], annotation: dict[str, Any], task: dict[str, Any]
) -> dict[str, Any]:
    bare_task = {k: v for k, v in task.items() if k not in ("annotations", "predictions")}
    return {
        "action": "ANNOTATION_UPDATED",
        "project": project,
        "annotation": {**annotation, "task": task["id"]},
        "task": bare_task,
    }


def _deleted_event(project: dict[str, Any], annotation_ids: list[int]) -> dict[str, Any]:
    return {
        "action": "ANNOTATIONS_DELETED",
        "project": project,
        "annotations": [{"id": i} for i in sorted(annotation_ids)],
    }
