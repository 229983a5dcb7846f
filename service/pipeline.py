"""One training job, start to finish: sync tasks, embed, train the head, register, push.

Label Studio tasks -> embeddings (cached) -> head trained on labeled tasks -> version stored
and activated -> predictions for unlabeled tasks imported -> project model_version set
"""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from service.context import Services
from service.embedding import Embedder
from service.fold import project_row
from service.predictions import push_predictions
from service.vision.backbone import BackboneSpec
from service.vision.head import Head, TrainResult, train_head
from storage import labels, models

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    status: str  # succeeded | skipped | failed
    error: str | None = None
    model_version: str | None = None


class Pipeline:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.embedder = Embedder(services)

    async def run(self, project_id: int, job_id: int, progress: dict[str, Any]) -> Outcome:
        settings = self.services.settings.training_for(project_id)
        project = await self._sync_project(project_id)
        if project.unsupported_reason:
            return Outcome("skipped", error=f"unsupported project: {project.unsupported_reason}")
        await self._sync_tasks(project_id, progress)

        tasks, labeled = await self._db(_snapshot, project_id)
        if len(set(labeled.values())) < 2:
            return Outcome("skipped", error="need labels of at least two classes to train")

        spec = BackboneSpec(settings.architecture, settings.weights, settings.image_size)
        report = await self.embedder.embed_tasks(
            tasks, project.image_key, spec, settings.device, _stage(progress, "embedding")
        )
        progress["images"] = {
            "cached": report.cached,
            "embedded": report.embedded,
            "failed": report.failed,
            "forward_passes": report.forward_passes,
        }
        train_ids = [tid for tid in labeled if tid in report.vectors]
        if len({labeled[tid] for tid in train_ids}) < 2:
            return Outcome("skipped", error="fewer than two classes have a readable image")

        progress["stage"] = "training"
        result: TrainResult = await asyncio.to_thread(
            train_head,
            torch.stack([report.vectors[tid] for tid in train_ids]),
            [labeled[tid] for tid in train_ids],
            train_ids,
        )
        version = await self._db(
            _register, project_id, job_id, spec, result, len(train_ids), settings
        )
        logger.info("project %d: %s trained on %d labels", project_id, version, len(train_ids))

        unlabeled = [t.id for t in tasks if t.id not in labeled and t.id in report.vectors]
        pushed = await push_predictions(
            self.services.label_studio,
            project_id,
            version,
            result.head,
            {tid: report.vectors[tid] for tid in unlabeled},
            from_name=project.from_name,
            to_name=project.to_name,
            progress=_stage(progress, "pushing"),
        )
        progress["stage"] = "done"
        progress["pushed"] = pushed
        return Outcome("succeeded", model_version=version)

    async def _sync_project(self, project_id: int) -> Any:
        """Refresh the project's label config from Label Studio (it may have changed)."""
        project = await self.services.label_studio.get_project(project_id)
        await self._db(labels.save_project, project_id, project_row(project))
        return await self._db(labels.get_project, project_id)

    async def _sync_tasks(self, project_id: int, progress: dict[str, Any]) -> None:
        """Label Studio's task list is the truth for which tasks exist (webhooks may be lost)."""
        progress["stage"] = "listing tasks"
        seen: list[dict[str, Any]] = []
        async for task in self.services.label_studio.iter_tasks(project_id):
            seen.append({"id": task["id"], "data": task.get("data") or {}})
        await self._db(_replace_tasks, project_id, seen)

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            with self.services.engine.begin() as conn:
                return fn(conn, *args)

        return await asyncio.to_thread(run)


def _snapshot(conn: Any, project_id: int) -> tuple[list[Any], dict[int, str]]:
    return list(labels.project_tasks(conn, project_id)), labels.training_labels(conn, project_id)


def _replace_tasks(conn: Any, project_id: int, seen: list[dict[str, Any]]) -> None:
    labels.save_tasks(conn, project_id, seen)
    current = {t["id"] for t in seen}
    gone = [t.id for t in labels.project_tasks(conn, project_id) if t.id not in current]
    labels.delete_tasks(conn, gone)


def _register(
    conn: Any,
    project_id: int,
    job_id: int,
    spec: BackboneSpec,
    result: TrainResult,
    trained_on: int,
    settings: Any,
) -> str:
    """Store the new version and make it active, in one transaction."""
    version = models.next_version(conn, project_id)
    models.add(
        conn,
        project_id,
        version,
        {
            "job_id": job_id,
            "backbone": spec.identity(),
            "labels": list(result.head.labels),
            "trained_on": trained_on,
            "metrics": None if result.metrics is None else result.metrics.to_dict(),
            "head": result.head.to_bytes(),
            "settings": {
                "architecture": settings.architecture,
                "weights": settings.weights,
                "image_size": settings.image_size,
                "mode": settings.mode,
            },
        },
    )
    models.activate(conn, project_id, version)
    return version


def _stage(progress: dict[str, Any], stage: str) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        progress.update(stage=stage, done=done, total=total)

    return update


__all__ = ["Head", "Outcome", "Pipeline"]
