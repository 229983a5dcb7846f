"""What a project looks like right now, as JSON: the body of GET /projects/{id}."""

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from storage import events, jobs, labels, models, pushed


def project_status(conn: Connection, project_id: int) -> dict[str, Any] | None:
    project = labels.get_project(conn, project_id)
    if project is None:
        return None
    active = models.active(conn, project_id)
    return {
        "id": project_id,
        "title": project.title,
        "supported": project.unsupported_reason is None,
        "unsupported_reason": project.unsupported_reason,
        "choices": project.choices,
        "trained_tags": trained_tags(project),
        "events": events.count(conn, project_id),
        "annotations": labels.count_annotations(conn, project_id),
        "labeled_tasks": len(labels.training_labels(conn, project_id)),
        "changes_since_last_job": jobs.changes_since_last_job(conn, project_id),
        "active_model": None if active is None else active_summary(conn, project_id, active),
        "jobs": [job_summary(job) for job in jobs.recent(conn, project_id)],
        "image_failures": [
            {"task": task_id, "error": error}
            for task_id, error in labels.image_failures(conn, project_id)
        ],
    }


def trained_tags(project: Any) -> list[dict[str, Any]]:
    """The Choices tags the project's heads learn: ``[{name, choices, multiple}]``, in config
    order; [] when the project is not supported."""
    if project.unsupported_reason is not None:
        return []
    if project.targets:
        return [
            {"name": t["from_name"], "choices": t["choices"], "multiple": bool(t["multiple"])}
            for t in project.targets
        ]
    if project.from_name is None:
        return []
    return [{"name": project.from_name, "choices": project.choices, "multiple": False}]


def projects_overview(conn: Connection) -> list[dict[str, Any]]:
    overview = []
    for project in labels.list_projects(conn):
        active = models.active(conn, project.id)
        overview.append(
            {
                "id": project.id,
                "title": project.title,
                "supported": project.unsupported_reason is None,
                "annotations": labels.count_annotations(conn, project.id),
                "active_version": None if active is None else active.version,
            }
        )
    return overview


def active_summary(conn: Connection, project_id: int, row: Any) -> dict[str, Any]:
    """The active version, and the model_version its predictions carry in Label Studio (the
    project's one name for every version labelloop pushes; null before the first push)."""
    name = pushed.label_studio_version(conn, project_id)
    return {**version_summary(row), "label_studio_version": name}


def version_summary(row: Any) -> dict[str, Any]:
    return {
        "version": row.version,
        "trained_on": row.trained_on,
        "metrics": row.metrics,
        "created_at": _iso(row.created_at),
        "active": bool(row.active),
        "promotion": row.promotion,
        "backbone": row.backbone,
        "labels": row.labels,
        # a fine-tuned version past [training] keep_versions: history only, not activatable
        "weights_deleted": _weights_deleted(row),
    }


def _weights_deleted(row: Any) -> bool:
    if "has_weights" in row._fields:  # models.listing leaves the weights out
        kept = bool(row.has_weights)
    else:
        kept = row.backbone_weights is not None
    return (row.settings or {}).get("mode") == "finetune" and not kept


def job_summary(job: Any) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "reason": job.reason,
        "status": job.status,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "attempts": job.attempts,
        "progress": job.progress,
        "model_version": job.model_version,
        "note": job.note,
        "error": job.error,
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
