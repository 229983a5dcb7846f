"""What a Label Studio webhook body means: its project, tasks and annotations, validated.

Reading a body is kept apart from applying it, so the fold can read a whole batch first and then
write it in a few set-based statements. Anything malformed raises one of ``BAD_EVENT`` here,
before any state changes, so one bad body is skipped whole. This module must never import torch
(the webhook uses it).
"""

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from service.labelstudio.ids import as_id
from service.labelstudio.targets import read_targets, targets_of

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
# What a malformed body raises while it is read or applied: it is skipped (it stays in the log).
# A database that is down raises OperationalError instead, and the batch is retried later.
BAD_EVENT = (
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
    ArithmeticError,
    sa.exc.DataError,
    sa.exc.IntegrityError,
)


def parse_json(raw: bytes | str, *, allow_nan: bool = True) -> Any:
    """A JSON document, read by orjson first: a third of json's time on a 2 KB body (the
    webhook's hot path, and the fold's). What orjson refuses (integers over 64 bits, lone
    surrogates, NaN/Infinity, deep nesting) goes to Python's json, so exactly the documents json
    accepts are accepted. Raises ValueError, or RecursionError for very deep nesting."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text) if allow_nan else _WITHOUT_NAN.decode(text)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity


_WITHOUT_NAN = json.JSONDecoder(parse_constant=_no_constant)  # built once, not per call


def project_id_of(body: Mapping[str, Any]) -> int | None:
    """The project an event belongs to: ``project`` is an object, or an id in some payloads."""
    project = body.get("project")
    if isinstance(project, Mapping):
        project = project.get("id")
    try:
        return as_id(project)
    except ValueError:
        return None


@dataclass(frozen=True)
class AnnotationSeen:
    """A created or updated annotation; its label needs the project's config to be read."""

    id: int
    task_id: int
    was_cancelled: bool
    updated_at: str
    result: Any  # Label Studio's result list, as sent
    annotator: int | None = None  # Label Studio's ``completed_by`` user id, when sent

    def label_in(self, project: Mapping[str, Any]) -> str | None:
        """What ``project_label`` reads in this annotation under the project's row."""
        return None if self.was_cancelled else project_label(self.result, project)


def project_label(result: Any, project: Mapping[str, Any]) -> str | None:
    """An annotation's label under a ``projects`` row: its targets' encoded label when it has
    several Choices or a multiple-choice one (service.labelstudio.targets), else ``read_label``."""
    targets = targets_of(project.get("targets"))
    if targets:
        return read_targets(result, targets)
    return read_label(result, project.get("from_name"), project.get("choices"))


def read_label(result: Any, from_name: str | None, choices: Collection[str] | None) -> str | None:
    """The first choice of the ``from_name`` control, if the config still offers it; None for
    no choice, or one the config does not (no longer) list: that is no training label. Read at
    fold time, and again from the stored result whenever the config changes
    (service.ingest.relabel)."""
    if from_name is None or not choices or not isinstance(result, list):
        return None
    for item in result:
        if (
            isinstance(item, Mapping)
            and item.get("type") == "choices"
            and item.get("from_name") == from_name
        ):
            value = item.get("value")
            picked = value.get("choices") if isinstance(value, Mapping) else None
            if picked and isinstance(picked, list):
                label = str(picked[0])
                return label if label in choices else None
    return None


def dump_result(result: Any) -> str:
    """An annotation's result as the JSON text stored beside its label (orjson, ~10x faster;
    json for what orjson refuses: integers over 64 bits, lone surrogates)."""
    try:
        return orjson.dumps(result).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(result)


@dataclass
class Event:
    """One webhook body, read: what it says about its project's state."""

    id: int
    action: str
    project_id: int
    # The project object when the body carries its label config (title, label_config).
    project: Mapping[str, Any] | None = None
    tasks: list[dict[str, Any]] = field(default_factory=list)  # {"id", "data"} to save
    annotations: list[AnnotationSeen] = field(default_factory=list)
    deleted_annotations: list[int] = field(default_factory=list)
    deleted_tasks: list[int] = field(default_factory=list)


def read_event(event_id: int, action: str, body: Mapping[str, Any]) -> Event | None:
    """The event's meaning; None when it belongs to no project. Raises one of ``BAD_EVENT``."""
    project_id = project_id_of(body)
    if project_id is None:
        return None
    project = body["project"]
    event = Event(event_id, action, project_id)
    if isinstance(project, Mapping) and "label_config" in project:
        event.project = project
    if action in ANNOTATION_ACTIONS:
        event.tasks = _tasks(body.get("task"))
        event.annotations = [_annotation(raw) for raw in _as_list(body["annotation"])]
    elif action == "ANNOTATIONS_DELETED":
        event.deleted_annotations = [as_id(a["id"]) for a in _as_list(body["annotations"])]
    elif action == "TASKS_CREATED":
        event.tasks = _tasks(body.get("tasks"))
    elif action == "TASKS_DELETED":
        event.deleted_tasks = [as_id(t["id"]) for t in _as_list(body.get("tasks"))]
    return event


def _annotation(raw: Mapping[str, Any]) -> AnnotationSeen:
    task = raw["task"]
    return AnnotationSeen(
        id=as_id(raw["id"]),
        task_id=as_id(task["id"] if isinstance(task, Mapping) else task),
        was_cancelled=bool(raw.get("was_cancelled", False)),
        updated_at=str(raw.get("updated_at") or raw.get("created_at") or ""),
        result=raw.get("result") or [],
        annotator=annotator_of(raw.get("completed_by")),
    )


def annotator_of(completed_by: Any) -> int | None:
    """The user id in an annotation's ``completed_by``: an id, or a user object with one
    (None for anything else: who annotated is shown, never needed)."""
    if isinstance(completed_by, Mapping):
        completed_by = completed_by.get("id")
    try:
        return as_id(completed_by)
    except ValueError:
        return None


def _tasks(raw: Any) -> list[dict[str, Any]]:
    return [
        {"id": as_id(t["id"]), "data": t.get("data") or {}}
        for t in _as_list(raw)
        if isinstance(t, Mapping) and "id" in t
    ]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]
