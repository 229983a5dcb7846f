"""Jobs, start to finish.

train: Label Studio tasks -> embeddings (cached) -> head on labeled tasks -> evaluation ->
       version stored -> promotion gate -> (if promoted) activate and push predictions
push:  a stored version's predictions for the unlabeled tasks -> project model_version
"""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from service.context import Services
from service.embedding import Embedder, EmbedReport
from service.fold import project_row
from service.predictions import push_predictions
from service.promotion import Decision, decide
from service.settings import TrainingSettings
from service.vision.backbone import BackboneSpec
from service.vision.head import Head, Metrics, TrainResult, evaluate, fold_of, train_head
from storage import labels, models

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    status: str  # succeeded | skipped | failed
    error: str | None = None
    model_version: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Snapshot:
    project: Any
    tasks: list[Any]
    labeled: dict[int, str]  # task id -> label

    def unlabeled(self, vectors: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return {
            t.id: vectors[t.id] for t in self.tasks if t.id not in self.labeled and t.id in vectors
        }


class Pipeline:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.embedder = Embedder(services)

    async def train(self, project_id: int, job_id: int, progress: dict[str, Any]) -> Outcome:
        settings = self.services.settings.training_for(project_id)
        snapshot = await self._snapshot(project_id, progress)
        if snapshot.project.unsupported_reason:
            reason = snapshot.project.unsupported_reason
            return Outcome("skipped", error=f"unsupported project: {reason}")
        if len(set(snapshot.labeled.values())) < 2:
            return Outcome("skipped", error="need labels of at least two classes to train")

        spec = BackboneSpec(settings.architecture, settings.weights, settings.image_size)
        report = await self._embed(snapshot, snapshot.tasks, spec, settings, progress)
        train_ids = [tid for tid in snapshot.labeled if tid in report.vectors]
        if len({snapshot.labeled[tid] for tid in train_ids}) < 2:
            return Outcome("skipped", error="fewer than two classes have a readable image")

        progress["stage"] = "training"
        x = torch.stack([report.vectors[tid] for tid in train_ids])
        y = [snapshot.labeled[tid] for tid in train_ids]
        result: TrainResult = await asyncio.to_thread(train_head, x, y, train_ids)
        version, decision = await self._db(
            _register, project_id, job_id, spec, settings, result, train_ids, x, y
        )
        logger.info("project %d: %s on %d labels: %s", project_id, version, len(y), decision.reason)
        if decision.promote:
            await self._push(snapshot, version, result.head, report, progress)
        progress["stage"] = "done"
        return Outcome("succeeded", model_version=version, note=decision.reason)

    async def push(self, project_id: int, version: str, progress: dict[str, Any]) -> Outcome:
        """Push a stored version's predictions (rollback, or new tasks for the active one)."""
        row = await self._db(models.get, project_id, version)
        if row is None:
            return Outcome("failed", error=f"no version {version!r} in project {project_id}")
        stored = row.settings
        spec = BackboneSpec(stored["architecture"], stored["weights"], stored["image_size"])
        settings = self.services.settings.training_for(project_id)
        snapshot = await self._snapshot(project_id, progress)
        if snapshot.project.unsupported_reason:
            return Outcome("skipped", error=f"unsupported: {snapshot.project.unsupported_reason}")
        unlabeled = [t for t in snapshot.tasks if t.id not in snapshot.labeled]
        report = await self._embed(snapshot, unlabeled, spec, settings, progress)
        await self._push(snapshot, version, Head.from_bytes(row.head), report, progress)
        progress["stage"] = "done"
        return Outcome("succeeded", model_version=version)

    async def _snapshot(self, project_id: int, progress: dict[str, Any]) -> Snapshot:
        """Refresh the project's config and task list from Label Studio, then read the labels.

        Label Studio is the truth for which tasks exist (webhooks can be lost) and for the
        label config (it may have changed); the labels come from the folded event log.
        """
        progress["stage"] = "listing tasks"
        project = await self.services.label_studio.get_project(project_id)
        seen: list[dict[str, Any]] = []
        async for task in self.services.label_studio.iter_tasks(project_id):
            seen.append({"id": task["id"], "data": task.get("data") or {}})
        snapshot: Snapshot = await self._db(_sync_and_read, project_id, project_row(project), seen)
        return snapshot

    async def _embed(
        self,
        snapshot: Snapshot,
        tasks: list[Any],
        spec: BackboneSpec,
        settings: TrainingSettings,
        progress: dict[str, Any],
    ) -> EmbedReport:
        report = await self.embedder.embed_tasks(
            tasks, snapshot.project.image_key, spec, settings.device, _stage(progress, "embedding")
        )
        progress["images"] = {
            "cached": report.cached,
            "embedded": report.embedded,
            "failed": report.failed,
            "forward_passes": report.forward_passes,
        }
        return report

    async def _push(
        self,
        snapshot: Snapshot,
        version: str,
        head: Head,
        report: EmbedReport,
        progress: dict[str, Any],
    ) -> None:
        progress["pushed"] = await push_predictions(
            self.services.label_studio,
            snapshot.project.id,
            version,
            head,
            snapshot.unlabeled(report.vectors),
            from_name=snapshot.project.from_name,
            to_name=snapshot.project.to_name,
            progress=_stage(progress, "pushing"),
        )

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            with self.services.engine.begin() as conn:
                return fn(conn, *args)

        return await asyncio.to_thread(run)


def _sync_and_read(
    conn: Any, project_id: int, project: dict[str, Any], seen: list[dict[str, Any]]
) -> Snapshot:
    labels.save_project(conn, project_id, project)
    labels.save_tasks(conn, project_id, seen)
    current = {t["id"] for t in seen}
    labels.delete_tasks(
        conn, [t.id for t in labels.project_tasks(conn, project_id) if t.id not in current]
    )
    return Snapshot(
        project=labels.get_project(conn, project_id),
        tasks=list(labels.project_tasks(conn, project_id)),
        labeled=labels.training_labels(conn, project_id),
    )


def _register(
    conn: Any,
    project_id: int,
    job_id: int,
    spec: BackboneSpec,
    settings: TrainingSettings,
    result: TrainResult,
    task_ids: list[int],
    x: torch.Tensor,
    y: list[str],
) -> tuple[str, Decision]:
    """Store the version and, if the gate agrees, activate it: one transaction, so a crash
    leaves the previous version active and no half-written one."""
    active = models.active(conn, project_id)
    decision = decide(
        result.metrics,
        result.head.labels,
        active,
        _active_on_same_tasks(active, spec, result.metrics, task_ids, x, y),
        settings.promotion_margin,
    )
    version = models.next_version(conn, project_id)
    models.add(
        conn,
        project_id,
        version,
        {
            "job_id": job_id,
            "backbone": spec.identity(),
            "labels": list(result.head.labels),
            "trained_on": len(task_ids),
            "metrics": None if result.metrics is None else result.metrics.to_dict(),
            "head": result.head.to_bytes(),
            "promotion": decision.reason,
            "settings": {
                "architecture": spec.architecture,
                "weights": spec.weights,
                "image_size": spec.image_size,
                "mode": settings.mode,
            },
        },
    )
    if decision.promote:
        models.activate(conn, project_id, version)
    return version, decision


def _active_on_same_tasks(
    active: Any,
    spec: BackboneSpec,
    metrics: Metrics | None,
    task_ids: list[int],
    x: torch.Tensor,
    y: list[str],
) -> Metrics | None:
    """The active head's metrics on the new version's held-out tasks, when comparable."""
    if active is None or metrics is None or metrics.scheme != "holdout":
        return None
    if active.backbone != spec.identity() or sorted(active.labels) != sorted(set(y)):
        return None
    held = [i for i, tid in enumerate(task_ids) if fold_of(tid) == 0]
    if not held:
        return None
    head = Head.from_bytes(active.head)
    return evaluate(head, x[held], [y[i] for i in held])


def _stage(progress: dict[str, Any], stage: str) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        progress.update(stage=stage, done=done, total=total)

    return update
