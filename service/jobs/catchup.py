"""Catch-up: fold in whatever the webhooks missed, from Label Studio's own records.

Label Studio sends each webhook once, with no retry: while labelloop is down, restarting or
deploying, annotations are lost to the log. On start and on a schedule, labelloop pages through
each project's tasks with their annotations and appends what differs as events of source
``catch-up``: an annotation it lacks or holds an older version of, and one it holds that Label
Studio no longer has (deleted). The folder then folds them like any webhook, so counts come back
to Label Studio's truth and the threshold fires if it was crossed.
"""

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from service.context import Services
from service.labelstudio.errors import LabelStudioError
from storage import events, labels

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatchUpReport:
    project_id: int
    changed: int  # created or updated annotations the log did not have
    deleted: int


async def catch_up_all(services: Services) -> list[CatchUpReport]:
    """Catch up every supported project known here or named in settings; failures are logged
    (Label Studio may be down too) and do not stop the others."""

    def project_ids() -> list[int]:
        with services.engine.begin() as conn:
            known = {p.id for p in labels.list_projects(conn) if not p.unsupported_reason}
        return sorted(known | set(services.settings.projects))

    reports = []
    for project_id in await asyncio.to_thread(project_ids):
        try:
            reports.append(await catch_up(services, project_id))
        except Exception as exc:
            logger.warning("catch-up of project %d failed: %s", project_id, exc)
            if isinstance(exc, LabelStudioError):
                services.metrics.label_studio_error(exc)
    return reports


async def catch_up(services: Services, project_id: int) -> CatchUpReport:
    client = services.label_studio
    project = await client.get_project(project_id)
    remote: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
    async for task in client.iter_tasks(project_id, with_annotations=True):
        for annotation in task.get("annotations") or []:
            remote[int(annotation["id"])] = (annotation, task)

    def append() -> CatchUpReport:
        with services.engine.begin() as conn:
            local = labels.annotation_states(conn, project_id)
            changed = [
                _annotation_event(project, annotation, task)
                for annotation_id, (annotation, task) in sorted(remote.items())
                if _missing_or_older(local.get(annotation_id), annotation)
            ]
            gone = [i for i, (_, deleted) in local.items() if not deleted and i not in remote]
            bodies = changed
            if gone:
                bodies = [*changed, _deleted_event(project, gone)]
            for body in bodies:
                events.append(
                    conn,
                    action=body["action"],
                    project_id=project_id,
                    body=json.dumps(body),
                    source="catch-up",
                )
        return CatchUpReport(project_id, len(changed), len(gone))

    report = await asyncio.to_thread(append)
    if report.changed or report.deleted:
        logger.info(
            "catch-up of project %d: %d annotations created or updated, %d deleted",
            project_id,
            report.changed,
            report.deleted,
        )
        services.event_writer.notify_appended()
    return report


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
