"""Jobs, start to finish.

train: Label Studio tasks -> embeddings (cached) -> head on labeled tasks -> evaluation ->
       version stored -> promotion gate -> (if promoted) activate and push predictions
push:  a stored version's predictions for the unlabeled tasks -> project model_version
"""

import asyncio
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.context import Services
from service.embedding import Embedder, EmbedReport
from service.payloads import project_row
from service.predictions import push_predictions
from service.promotion import Decision, decide
from service.settings import TrainingSettings
from service.vision.backbone import BackboneSpec, resolve_device
from service.vision.finetune import FinetuneResult, finetune
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


@dataclass
class Fitted:
    """A trained model before it is stored: what predicts, and what it was trained on."""

    spec: BackboneSpec  # the backbone whose embeddings `head` reads
    head: Head
    metrics: Metrics | None
    task_ids: list[int]
    x: torch.Tensor | None  # the labeled embeddings under `spec` (head mode), for the gate
    labels: list[str]
    vectors: dict[int, torch.Tensor]  # task id -> embedding under `spec`, as far as known
    attempted: set[int]  # tasks this job already tried to embed (failed ones are not retried)
    backbone_weights: bytes | None = None  # finetune mode: the network without its fc


class Pipeline:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.embedder = Embedder(services)

    async def train(
        self, project_id: int, job_id: int, kind: str, progress: dict[str, Any]
    ) -> Outcome:
        settings = self.services.settings.training_for(project_id)
        snapshot = await self._snapshot(project_id, progress)
        if snapshot.project.unsupported_reason:
            reason = snapshot.project.unsupported_reason
            return Outcome("skipped", error=f"unsupported project: {reason}")
        if len(set(snapshot.labeled.values())) < 2:
            return Outcome("skipped", error="need labels of at least two classes to train")

        spec = BackboneSpec(settings.architecture, settings.weights, settings.image_size)
        if kind == "finetune":
            fitted = await self._finetune(snapshot, spec, settings, progress)
        else:
            fitted = await self._fit_head(snapshot, spec, settings, progress)
        if fitted is None:
            return Outcome("skipped", error="fewer than two classes have a readable image")
        version, decision = await self._db(_register, project_id, job_id, settings, fitted)
        logger.info("project %d: %s (%s): %s", project_id, version, kind, decision.reason)
        if decision.promote:
            await self._push(snapshot, version, fitted, settings, progress)
        progress["stage"] = "done"
        return Outcome("succeeded", model_version=version, note=decision.reason)

    async def push(self, project_id: int, version: str, progress: dict[str, Any]) -> Outcome:
        """Push a stored version's predictions (rollback, or new tasks for the active one)."""
        row = await self._db(models.get, project_id, version)
        if row is None:
            return Outcome("failed", error=f"no version {version!r} in project {project_id}")
        spec = version_spec(row)
        settings = self.services.settings.training_for(project_id)
        snapshot = await self._snapshot(project_id, progress)
        if snapshot.project.unsupported_reason:
            return Outcome("skipped", error=f"unsupported: {snapshot.project.unsupported_reason}")
        stored_model = Fitted(spec, Head.from_bytes(row.head), None, [], None, [], {}, set())
        await self._push(snapshot, version, stored_model, settings, progress)
        progress["stage"] = "done"
        return Outcome("succeeded", model_version=version)

    async def _fit_head(
        self,
        snapshot: Snapshot,
        spec: BackboneSpec,
        settings: TrainingSettings,
        progress: dict[str, Any],
    ) -> Fitted | None:
        """A classifier on cached embeddings; every task is embedded (for the push too)."""
        report = await self._embed(snapshot.tasks, snapshot, spec, settings, progress)
        ids = [tid for tid in snapshot.labeled if tid in report.vectors]
        y = [snapshot.labeled[tid] for tid in ids]
        if len(set(y)) < 2:
            return None
        progress["stage"] = "training"
        x = torch.stack([report.vectors[tid] for tid in ids])
        result: TrainResult = await asyncio.to_thread(train_head, x, y, ids)
        attempted = {t.id for t in snapshot.tasks}
        return Fitted(spec, result.head, result.metrics, ids, x, y, report.vectors, attempted)

    async def _finetune(
        self,
        snapshot: Snapshot,
        spec: BackboneSpec,
        settings: TrainingSettings,
        progress: dict[str, Any],
    ) -> Fitted | None:
        """The whole network on the labeled images; unlabeled ones are embedded after."""
        labeled = [t for t in snapshot.tasks if t.id in snapshot.labeled]
        images = await self.embedder.load_images(
            labeled, snapshot.project.image_key, spec.image_size, _stage(progress, "loading images")
        )
        ids = [tid for tid in snapshot.labeled if tid in images]
        y = [snapshot.labeled[tid] for tid in ids]
        if len(set(y)) < 2:
            return None
        result: FinetuneResult = await asyncio.to_thread(
            finetune,
            spec,
            [images[tid] for tid in ids],
            y,
            ids,
            device=resolve_device(settings.device),
            epochs=settings.finetune_epochs,
            progress=_stage(progress, "fine-tuning epoch"),
        )
        blob = _state_bytes(result.backbone)
        tuned = BackboneSpec(spec.architecture, str(materialize_weights(blob)), spec.image_size)
        return Fitted(tuned, result.head, result.metrics, ids, None, y, {}, set(), blob)

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
        tasks: list[Any],
        snapshot: Snapshot,
        spec: BackboneSpec,
        settings: TrainingSettings,
        progress: dict[str, Any],
    ) -> EmbedReport:
        report = await self.embedder.embed_tasks(
            tasks, snapshot.project.image_key, spec, settings.device, _stage(progress, "embedding")
        )
        self.services.metrics.embedded(report.forward_passes)
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
        model: Fitted,
        settings: TrainingSettings,
        progress: dict[str, Any],
    ) -> None:
        """Predict every unlabeled task (embedding what is not known yet) and push."""
        unlabeled = [t for t in snapshot.tasks if t.id not in snapshot.labeled]
        vectors = model.vectors
        missing = [t for t in unlabeled if t.id not in vectors and t.id not in model.attempted]
        if missing:
            report = await self._embed(missing, snapshot, model.spec, settings, progress)
            vectors = {**vectors, **report.vectors}
        progress["pushed"] = await push_predictions(
            self.services.label_studio,
            snapshot.project.id,
            version,
            model.head,
            {t.id: vectors[t.id] for t in unlabeled if t.id in vectors},
            from_name=snapshot.project.from_name,
            to_name=snapshot.project.to_name,
            progress=_stage(progress, "pushing"),
        )
        self.services.metrics.pushed(progress["pushed"])

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
    conn: Any, project_id: int, job_id: int, settings: TrainingSettings, fitted: Fitted
) -> tuple[str, Decision]:
    """Store the version and, if the gate agrees, activate it: one transaction, so a crash
    leaves the previous version active and no half-written one."""
    active = models.active(conn, project_id)
    decision = decide(
        fitted.metrics,
        fitted.head.labels,
        active,
        _active_on_same_tasks(active, fitted),
        settings.promotion_margin,
    )
    version = models.next_version(conn, project_id)
    models.add(
        conn,
        project_id,
        version,
        {
            "job_id": job_id,
            "backbone": fitted.spec.identity(),
            "labels": list(fitted.head.labels),
            "trained_on": len(fitted.task_ids),
            "metrics": None if fitted.metrics is None else fitted.metrics.to_dict(),
            "head": fitted.head.to_bytes(),
            "backbone_weights": fitted.backbone_weights,
            "promotion": decision.reason,
            "settings": {
                "architecture": settings.architecture,
                "weights": "finetuned" if fitted.backbone_weights else settings.weights,
                "base_weights": settings.weights,
                "image_size": settings.image_size,
                "mode": "finetune" if fitted.backbone_weights else "head",
            },
        },
    )
    if decision.promote:
        models.activate(conn, project_id, version)
    return version, decision


def _active_on_same_tasks(active: Any, fitted: Fitted) -> Metrics | None:
    """The active head's metrics on the new version's held-out tasks, when comparable:
    same backbone (so the cached embeddings are its inputs) and the same classes."""
    metrics = fitted.metrics
    if active is None or metrics is None or metrics.scheme != "holdout" or fitted.x is None:
        return None
    if active.backbone != fitted.spec.identity():
        return None
    if sorted(active.labels) != sorted(set(fitted.labels)):
        return None
    held = [i for i, tid in enumerate(fitted.task_ids) if fold_of(tid) == 0]
    if not held:
        return None
    head = Head.from_bytes(active.head)
    return evaluate(head, fitted.x[held], [fitted.labels[i] for i in held])


def version_spec(row: Any) -> BackboneSpec:
    """The backbone a stored version reads embeddings from (its own, after a fine-tune)."""
    stored = row.settings
    weights = stored["weights"]
    if row.backbone_weights is not None:
        weights = str(materialize_weights(row.backbone_weights))
    return BackboneSpec(stored["architecture"], weights, stored["image_size"])


def materialize_weights(blob: bytes) -> Path:
    """A fine-tuned backbone as a file the backbone loader reads, named by its content, so
    every process computes the same identity (and embedding cache key) for it."""
    folder = Path(tempfile.gettempdir()) / "labelloop-weights"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(blob).hexdigest()[:32]}.pt"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(blob)
        os.replace(partial, path)  # atomic: readers never see half a file
    return path


def _state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _stage(progress: dict[str, Any], stage: str) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        progress.update(stage=stage, done=done, total=total)

    return update
