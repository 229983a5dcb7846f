"""Fold the event log into the label state, in order, each event exactly once.

Runs right after the webhook's commit (and at start-up, for anything acknowledged but not yet
folded), never inside the webhook answer. A batch is folded in sets: its bodies are read
(service.ingest.payloads), the rows they touch are loaded in one query per table, the events are
applied in order to that in-memory copy, and the result is written back in one statement per
table. Per-event statements cost eight round trips an event and starved ingest of CPU.

A body that cannot be read is logged and skipped: it stays verbatim in the log, and one bad event
never blocks the ones behind it. A batch the database refuses (a value no column can hold) is
folded again one event at a time, so exactly the bad event is skipped.
"""

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection, Engine

from service.ingest.payloads import (
    ANNOTATION_ACTIONS,
    BAD_EVENT,
    AnnotationSeen,
    Event,
    dump_result,
    parse_json,
    read_event,
)
from service.ingest.relabel import label_under, reads_differently
from service.jobs import triggers
from service.labelstudio.labelconfig import project_row
from service.settings import Settings
from storage import events, jobs, labels, models

logger = logging.getLogger(__name__)

KNOWN_ACTIONS = frozenset(
    {*ANNOTATION_ACTIONS, "ANNOTATIONS_DELETED", "TASKS_CREATED", "TASKS_DELETED"}
    | {"START_TRAINING", "PROJECT_UPDATED"}
)
NEW_PROJECT = {
    "title": "",
    "label_config": "",
    "image_key": None,
    "from_name": None,
    "to_name": None,
    "choices": None,
    "targets": None,
    "unsupported_reason": None,
    "changes": 0,
}


@dataclass
class FoldResult:
    events: int = 0
    projects: set[int] = field(default_factory=set)  # whose training data changed
    queued_jobs: list[int] = field(default_factory=list)

    def add(self, other: "FoldResult") -> None:
        self.events += other.events
        self.projects |= other.projects
        self.queued_jobs += other.queued_jobs


# Events folded per transaction. The fold holds the write lock meanwhile (the in-process one, or
# the writer process's), so the batch bounds how long a webhook's commit can wait behind it.
FOLD_BATCH = 100


def fold_batch(engine: Engine, settings: Settings, limit: int = FOLD_BATCH) -> FoldResult:
    """Fold one batch of unfolded events in one transaction."""
    with engine.connect() as conn, _without_fsync(conn), conn.begin():
        return fold_pending(conn, settings, limit=limit)


@contextlib.contextmanager
def _without_fsync(conn: Connection) -> Iterator[None]:
    """On SQLite, commit folds without an fsync of their own (synchronous=NORMAL).

    Safe: a fold and its events' `folded` flags commit together, so a fold lost to a power
    cut is folded again; and the next webhook's FULL commit syncs the whole WAL, this fold's
    frames included. The webhook's commits stay FULL: acknowledged still means on disk.
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cursor = raw.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()


def fold_pending(conn: Connection, settings: Settings, limit: int = 500) -> FoldResult:
    """Fold up to ``limit`` unfolded events and fire threshold triggers; caller commits."""
    claimed = events.claim_unfolded(conn, limit)
    batch = [event for row in claimed if (event := _read(*row)) is not None]
    try:
        with conn.begin_nested():
            result = _fold(conn, settings, batch)
    except BAD_EVENT:
        result = FoldResult()
        for event in batch:
            try:
                with conn.begin_nested():
                    result.add(_fold(conn, settings, [event]))
            except BAD_EVENT as exc:
                logger.warning("event %d (%s) could not be stored: %r", event.id, event.action, exc)
    events.mark_folded(conn, [event_id for event_id, _, _ in claimed])
    result.events = len(claimed)
    result.queued_jobs += triggers.check_threshold(conn, settings, result.projects)
    return result


def _read(event_id: int, action: str, body: str) -> Event | None:
    try:
        event = read_event(event_id, action, parse_json(body))
    except (*BAD_EVENT, RecursionError) as exc:
        logger.warning("event %d (%s) could not be folded: %r", event_id, action, exc)
        return None
    if event is None:
        logger.info("event %d (%s) has no project; kept in the log, not folded", event_id, action)
    return event


def _fold(conn: Connection, settings: Settings, batch: Sequence[Event]) -> FoldResult:
    state = _State(conn, batch)
    result = FoldResult()
    for event in batch:
        try:
            state.apply(event)
        except BAD_EVENT as exc:
            logger.warning("event %d (%s) could not be folded: %r", event.id, event.action, exc)
            continue
        result.queued_jobs += _jobs_for(conn, settings, event)
    state.write(conn)
    result.projects = state.changed_projects
    return result


def _jobs_for(conn: Connection, settings: Settings, event: Event) -> list[int]:
    """Jobs an event asks for by itself (threshold triggers are checked once per batch)."""
    if event.action == "TASKS_CREATED":
        # Imported images get the active model's predictions now, without a retrain. The push
        # takes the version active when it runs (one promoted meanwhile), and is queued during
        # a first training too: its task list may have been read before the import.
        active = models.active(conn, event.project_id)
        if active is not None or jobs.training_running(conn, event.project_id):
            asked = None if active is None else active.version
            job_id, created = jobs.enqueue(
                conn, event.project_id, "new-tasks", kind="push", model_version=asked
            )
            return [job_id] if created else []
    elif event.action == "START_TRAINING":
        job_id, _ = triggers.request_training(conn, settings, event.project_id, "manual")
        return [job_id]
    elif event.action not in KNOWN_ACTIONS:
        logger.info("ignoring webhook action %s", event.action)
    return []


class _State:
    """The rows a batch touches, loaded once, changed in event order, written back in sets."""

    def __init__(self, conn: Connection, batch: Sequence[Event]) -> None:
        annotation_ids = {a.id for e in batch for a in e.annotations}
        annotation_ids.update(i for e in batch for i in e.deleted_annotations)
        self.conn = conn
        self.projects = labels.projects_by_id(conn, {e.project_id for e in batch})
        self.annotations = labels.annotations_by_id(conn, annotation_ids)
        self.all_loaded: set[int] = set()  # projects whose every annotation is in memory
        self.project_writes: dict[int, dict[str, Any]] = {}
        self.annotation_writes: set[int] = set()
        self.task_writes: dict[int, dict[str, Any]] = {}
        self.task_deletions: dict[int, int] = {}  # task id -> project id
        self.changes: Counter[int] = Counter()
        self.changed_projects: set[int] = set()

    def apply(self, event: Event) -> None:
        """Apply one event; raises one of BAD_EVENT before changing anything."""
        project_id = event.project_id
        project, written = self._project_after(event)
        seen = [(a, a.label_in(project)) for a in event.annotations]
        relabel = written is not None and reads_differently(self.projects.get(project_id), project)
        if relabel:
            self._load_all(project_id)
        # Nothing below raises.
        self.projects[project_id] = project
        if relabel:
            self._relabel(project_id, project)
        if written is not None:
            self.project_writes[project_id] = {**self.project_writes.get(project_id, {}), **written}
        for task in event.tasks:
            if task["id"] not in self.task_deletions:  # a deleted task stays deleted, as it was
                self.task_writes[task["id"]] = {**task, "project_id": project_id, "deleted": False}
        for annotation, label in seen:
            self._annotate(project_id, annotation, label)
        for annotation_id in event.deleted_annotations:
            self._delete_annotation(project_id, annotation_id)
        for task_id in event.deleted_tasks:
            if task_id in self.task_writes:
                self.task_writes[task_id]["deleted"] = True
            self.task_deletions[task_id] = project_id

    def write(self, conn: Connection) -> None:
        for project_id, values in sorted(self.project_writes.items()):
            labels.save_project(conn, project_id, values)
        labels.save_task_rows(conn, [self.task_writes[i] for i in sorted(self.task_writes)])
        for project_id in sorted(set(self.task_deletions.values())):
            gone = [i for i, p in sorted(self.task_deletions.items()) if p == project_id]
            labels.delete_tasks(conn, project_id, gone)
        rows = [self.annotations[i] for i in sorted(self.annotation_writes)]
        labels.save_annotations(conn, rows)
        labels.count_changes(conn, self.changes)

    def _load_all(self, project_id: int) -> None:
        """Every annotation of the project, into memory (what the batch changed stays)."""
        if project_id not in self.all_loaded:
            for row in labels.live_annotations(self.conn, project_id):
                self.annotations.setdefault(row["id"], row)
            self.all_loaded.add(project_id)

    def _relabel(self, project_id: int, project: dict[str, Any]) -> None:
        """The config changed: every label of the project is read again from its result, in
        event order, exactly as folding one event at a time would (service.ingest.relabel)."""
        for annotation_id, row in self.annotations.items():
            if row["project_id"] != project_id or row["deleted"] or row["was_cancelled"]:
                continue
            label = label_under(project, row["label"], row["result"])
            if label != row["label"]:
                self.annotations[annotation_id] = {**row, "label": label}
                self.annotation_writes.add(annotation_id)
                self.changes[project_id] += 1  # a training label came, went or changed
                self.changed_projects.add(project_id)

    def _project_after(self, event: Event) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The project's row after ``event``, and the columns to write (None: unchanged)."""
        stored = self.projects.get(event.project_id)
        given = event.project
        if given is not None and (
            stored is None
            or (stored["label_config"], stored["title"])
            != (given.get("label_config"), given.get("title") or "")
        ):
            values = project_row(given)
            return {**(stored or NEW_PROJECT), **values}, values
        if stored is None:
            return dict(NEW_PROJECT), {}
        return stored, None

    def _annotate(self, project_id: int, new: AnnotationSeen, label: str | None) -> None:
        old = self.annotations.get(new.id)
        if old is not None and (
            old["deleted"] or not labels.is_newer(new.updated_at, old["updated_at"])
        ):
            return  # a redelivery, an out-of-order older version, or a deleted annotation
        self.annotations[new.id] = {
            "id": new.id,
            "task_id": new.task_id,
            "project_id": project_id,
            "label": label,
            "was_cancelled": new.was_cancelled,
            "deleted": False,
            "updated_at": new.updated_at,
            "result": dump_result(new.result),
            "annotator": new.annotator,
        }
        self.annotation_writes.add(new.id)
        if _is_training_data(old) or (label is not None and not new.was_cancelled):
            self.changes[project_id] += 1
            self.changed_projects.add(project_id)

    def _delete_annotation(self, project_id: int, annotation_id: int) -> None:
        old = self.annotations.get(annotation_id)
        if old is not None and old["deleted"]:
            return
        if old is None:  # never seen: remember the deletion so a late create cannot revive it
            tombstone = {"task_id": 0, "project_id": project_id, "updated_at": ""}
            old = {"id": annotation_id, "was_cancelled": False, **tombstone}
            old.update(label=None, result=None, annotator=None)
        elif _is_training_data(old):
            self.changes[old["project_id"]] += 1
            self.changed_projects.add(project_id)
        self.annotations[annotation_id] = {**old, "deleted": True}
        self.annotation_writes.add(annotation_id)


def _is_training_data(row: dict[str, Any] | None) -> bool:
    return row is not None and row["label"] is not None and not row["was_cancelled"]
