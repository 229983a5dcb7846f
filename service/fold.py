"""Fold the event log into the label state, in order, each event exactly once.

Runs right after the webhook's commit (and at start-up, for anything acknowledged but not yet
folded), never inside the webhook answer. A body that cannot be applied is logged and skipped:
it stays verbatim in the log, and one bad event never blocks the ones behind it.
"""

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from service import triggers
from service.labelconfig import ImageClassification, parse_label_config
from service.settings import Settings
from storage import events, jobs, labels, models

logger = logging.getLogger(__name__)

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
MAX_ID = 2**31 - 1  # Label Studio's ids, and ours, are 32-bit integers
# What a malformed body raises while it is applied: it is skipped (it stays in the log). A
# database that is down raises OperationalError instead, and the batch is retried later.
BAD_EVENT = (
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
    ArithmeticError,
    sa.exc.DataError,
    sa.exc.IntegrityError,
)


def as_id(value: Any) -> int:
    """A Label Studio id: a non-negative 32-bit integer (or its digits); else ValueError."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return value
    raise ValueError(f"not an id: {value!r:.40}")


@dataclass
class FoldResult:
    events: int = 0
    projects: set[int] = field(default_factory=set)
    queued_jobs: list[int] = field(default_factory=list)


def fold_pending(conn: Connection, settings: Settings, limit: int = 500) -> FoldResult:
    """Fold up to ``limit`` unfolded events and fire threshold triggers; caller commits."""
    result = FoldResult()
    batch = events.claim_unfolded(conn, limit)
    for event_id, action, body in batch:
        try:
            with conn.begin_nested():
                _apply(conn, settings, action, json.loads(body), result)
        except BAD_EVENT as exc:
            logger.warning("event %d (%s) could not be folded: %r", event_id, action, exc)
    events.mark_folded(conn, [event_id for event_id, _, _ in batch])
    result.events = len(batch)
    result.queued_jobs += triggers.check_threshold(conn, settings, result.projects)
    return result


def project_row(project: Mapping[str, Any]) -> dict[str, Any]:
    """Columns of the ``projects`` row for a Label Studio project object."""
    config = parse_label_config(str(project.get("label_config") or ""))
    if isinstance(config, ImageClassification):
        parsed: dict[str, Any] = {
            "image_key": config.image_key,
            "from_name": config.from_name,
            "to_name": config.to_name,
            "choices": list(config.choices),
            "unsupported_reason": None,
        }
    else:
        parsed = dict.fromkeys(("image_key", "from_name", "to_name", "choices"))
        parsed["unsupported_reason"] = config.reason
    return {
        "title": str(project.get("title") or ""),
        "label_config": str(project.get("label_config") or ""),
        **parsed,
    }


def project_id_of(body: Mapping[str, Any]) -> int | None:
    """The project an event belongs to: ``project`` is an object, or an id in some payloads."""
    project = body.get("project")
    if isinstance(project, Mapping):
        project = project.get("id")
    try:
        return as_id(project)
    except ValueError:
        return None


def _apply(
    conn: Connection,
    settings: Settings,
    action: str,
    body: Mapping[str, Any],
    result: FoldResult,
) -> None:
    project_id = project_id_of(body)
    if project_id is None:
        logger.info("event %s has no project; kept in the log, not folded", action)
        return
    project = body["project"]
    stored = labels.get_project(conn, project_id)
    if isinstance(project, Mapping) and "label_config" in project:
        if stored is None or (stored.label_config, stored.title) != (
            project.get("label_config"),
            project.get("title") or "",
        ):
            labels.save_project(conn, project_id, project_row(project))
    elif stored is None:
        labels.save_project(conn, project_id, {})

    if action in ANNOTATION_ACTIONS:
        _save_tasks(conn, project_id, _as_list(body.get("task")))
        row = labels.get_project(conn, project_id)
        for annotation in _as_list(body["annotation"]):
            if labels.apply_annotation(conn, _annotation(annotation, project_id, row)):
                result.projects.add(project_id)
    elif action == "ANNOTATIONS_DELETED":
        for annotation in _as_list(body["annotations"]):
            if labels.delete_annotation(conn, as_id(annotation["id"]), project_id):
                result.projects.add(project_id)
    elif action == "TASKS_CREATED":
        _save_tasks(conn, project_id, _as_list(body.get("tasks")))
        # Imported images get the active model's predictions now, without a retrain.
        active = models.active(conn, project_id)
        if active is not None:
            job_id, created = jobs.enqueue(
                conn, project_id, "new-tasks", kind="push", model_version=active.version
            )
            if created:
                result.queued_jobs.append(job_id)
    elif action == "TASKS_DELETED":
        labels.delete_tasks(conn, [as_id(t["id"]) for t in _as_list(body.get("tasks"))])
    elif action == "START_TRAINING":
        job_id, _ = triggers.request_training(conn, settings, project_id, "manual")
        result.queued_jobs.append(job_id)
    elif action != "PROJECT_UPDATED":
        logger.info("ignoring webhook action %s", action)


def _annotation(raw: Mapping[str, Any], project_id: int, project: Any) -> labels.Annotation:
    task = raw["task"]
    task_id = as_id(task["id"] if isinstance(task, Mapping) else task)
    cancelled = bool(raw.get("was_cancelled", False))
    label = None
    if project is not None and project.from_name and not cancelled:
        label = _choice(raw.get("result") or [], project.from_name)
    return labels.Annotation(
        id=as_id(raw["id"]),
        task_id=task_id,
        project_id=project_id,
        label=label,
        was_cancelled=cancelled,
        updated_at=str(raw.get("updated_at") or raw.get("created_at") or ""),
    )


def _choice(result: list[Any], from_name: str) -> str | None:
    for item in result:
        if (
            isinstance(item, Mapping)
            and item.get("type") == "choices"
            and item.get("from_name") == from_name
        ):
            choices = (item.get("value") or {}).get("choices") or []
            if choices:
                return str(choices[0])
    return None


def _save_tasks(conn: Connection, project_id: int, raw: list[Any]) -> None:
    rows = [
        {"id": as_id(t["id"]), "data": t.get("data") or {}}
        for t in raw
        if isinstance(t, Mapping) and "id" in t
    ]
    labels.save_tasks(conn, project_id, rows)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]
