"""Realistic Label Studio webhook bodies (shapes as Label Studio 1.23.2 sends them)."""

from typing import Any

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="label" toName="image"><Choice value="red"/><Choice value="blue"/></Choices>'
    "</View>"
)


def project(project_id: int = 1, label_config: str = LABEL_CONFIG) -> dict[str, Any]:
    return {
        "id": project_id,
        "title": f"project {project_id}",
        "label_config": label_config,
        "model_version": "",
        "task_number": 10,
        "total_annotations_number": 0,
        "created_at": "2026-11-29T10:00:00.000000Z",
    }


def task(task_id: int, project_id: int = 1) -> dict[str, Any]:
    return {
        "id": task_id,
        "project": project_id,
        "data": {"image": f"/data/upload/{project_id}/img-{task_id}.png"},
        "annotations": [],
    }


def annotation(
    annotation_id: int,
    task_id: int,
    label: str | None,
    *,
    updated_at: str = "2026-11-29T10:00:00.000000Z",
    project_id: int = 1,
    was_cancelled: bool = False,
) -> dict[str, Any]:
    result = []
    if label is not None and not was_cancelled:
        result = [
            {
                "id": f"r{annotation_id}",
                "type": "choices",
                "from_name": "label",
                "to_name": "image",
                "origin": "manual",
                "value": {"choices": [label]},
            }
        ]
    return {
        "id": annotation_id,
        "task": task_id,
        "project": project_id,
        "result": result,
        "was_cancelled": was_cancelled,
        "ground_truth": False,
        "created_at": "2026-11-29T10:00:00.000000Z",
        "updated_at": updated_at,
        "completed_by": 1,
    }


def annotation_event(
    annotation_id: int,
    task_id: int,
    label: str | None,
    *,
    action: str = "ANNOTATION_CREATED",
    project_id: int = 1,
    **kwargs: Any,
) -> dict[str, Any]:
    return {
        "action": action,
        "project": project(project_id),
        "annotation": annotation(annotation_id, task_id, label, project_id=project_id, **kwargs),
        "task": task(task_id, project_id),
    }


def deleted_event(*annotation_ids: int, project_id: int = 1) -> dict[str, Any]:
    return {
        "action": "ANNOTATIONS_DELETED",
        "project": project(project_id),
        "annotations": [{"id": a} for a in annotation_ids],
    }
