"""Jobs, start to finish.

train: the project's tasks (read from the log) -> embeddings (cached) -> head on labeled tasks ->
       evaluation -> version stored -> promotion gate -> (if promoted) activate and push
       -> suspects (the label-review queue) and Label Studio's review tab
push:  the active version's predictions for the unlabeled tasks, what changed only, under the
       project's one Label Studio name -> project model_version
"""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.context import Services
from service.ingest import relabel
from service.jobs.catchup import learn_if_new
from service.jobs.embedding import Embedder, EmbedReport
from service.jobs.finetune_images import load_images
from service.jobs.multitarget import FINETUNE_REFUSED, fit_targets, mismatch
from service.jobs.predictions import push_predictions
from service.jobs.review import review
from service.jobs.task_images import image_uri
from service.jobs.threads import in_daemon_thread
from service.jobs.versions import (
    Fitted,
    discard_weights_file,
    materialize_weights,
    prepare_gate,
    register,
    state_bytes,
    unchanged_since,
    version_spec,
)
from service.labelstudio.labelconfig import project_row
from service.settings import TrainingSettings
from service.vision.backbone import BackboneSpec, resolve_device
from service.vision.duplicates import split_ids
from service.vision.finetune import FinetuneResult, finetune
from service.vision.head import TrainResult, train_head
from service.vision.image_store import ImageStore
from service.vision.multitarget import TargetError, load_model
from service.vision.ranking import Ranking
from storage import jobs, labels, models
from storage.db import reading

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

    def unchanged_labels(self) -> dict[int, str] | None:
        """The labels a training would use (those of live tasks), if every labeled task's
        image is known as its data names it now; None while one is not (never fetched, failed,
        or its URL changed): a training fetches it. (Unlabeled ones are the push's to fetch.)"""
        key = self.project.image_key
        live = {t.id: t for t in self.tasks if t.id in self.labeled}
        for task in live.values():
            if not task.image_hash or task.image_uri != image_uri(task, key):
                return None
        return {tid: label for tid, label in self.labeled.items() if tid in live}

    def unlabeled(self, vectors: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return {
            t.id: vectors[t.id] for t in self.tasks if t.id not in self.labeled and t.id in vectors
        }


class Pipeline:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.embedder = Embedder(services)

    async def train(
        self, project_id: int, job_id: int, kind: str, progress: dict[str, Any], *, lease: int
    ) -> Outcome:
        """``lease``: the worker's claim on the job; the version is registered only under it
        (else ``jobs.LeaseLost``), so a worker that lost its job stores and pushes nothing."""
        settings = self.services.settings.training_for(project_id)
        snapshot = await self._snapshot(project_id, progress)
        if snapshot.project.unsupported_reason:
            reason = snapshot.project.unsupported_reason
            return Outcome("skipped", error=f"unsupported project: {reason}")
        if len(set(snapshot.labeled.values())) < 2:
            return Outcome("skipped", error="need labels of at least two classes to train")
        active = await self._db(models.active, project_id)
        same = snapshot.unchanged_labels()
        if same is not None and unchanged_since(active, same, settings, kind):
            # The same labels and recipe would remake it: no version, but its predictions are
            # brought up to date (a delta: nothing is written when Label Studio holds them).
            await self.push(project_id, None, progress, job_id=job_id, lease=lease)
            return Outcome("succeeded", note=f"nothing changed since {active.version}")

        if kind == "finetune" and snapshot.project.targets:
            return Outcome("skipped", error=FINETUNE_REFUSED)

        spec = BackboneSpec(settings.architecture, settings.weights, settings.image_size)
        try:
            if kind == "finetune":
                fitted = await self._finetune(snapshot, spec, settings, progress)
            else:
                fitted = await self._fit_head(snapshot, spec, settings, progress)
        except TargetError as exc:
            return Outcome("skipped", error=str(exc))
        if fitted is None:
            return Outcome("skipped", error="fewer than two classes have a readable image")
        try:
            # Names Label Studio already holds (an earlier install's, say) are never reused.
            taken = set(await self.services.label_studio.model_versions(project_id))
            await asyncio.to_thread(prepare_gate, self.services.engine, project_id, fitted)
            version, decision = await self._db(
                _register_leased, job_id, lease, project_id, job_id, settings, fitted, taken
            )
        except BaseException:
            if fitted.backbone_weights is not None:  # stored nowhere: its file goes too
                discard_weights_file(Path(fitted.spec.weights))
            raise
        logger.info("project %d: %s (%s): %s", project_id, version, kind, decision.reason)
        if decision.promote:
            await self._push(snapshot, version, fitted, settings, progress, job_id, lease)
        progress["stage"] = "reviewing labels"  # the suspects, and Label Studio's review tab
        found = await review(self.services, project_id, version, fitted, job_id=job_id, lease=lease)
        if found is not None:
            progress["suspects"] = found
        progress["stage"] = "done"
        return Outcome("succeeded", model_version=version, note=decision.reason)

    async def push(
        self,
        project_id: int,
        requested: str | None,
        progress: dict[str, Any],
        *,
        job_id: int,
        lease: int,
    ) -> Outcome:
        """Push the active version's predictions (new tasks, a rollback), only while the
        worker still holds the job's ``lease``.

        The version is the one active when the push runs, not when it was queued: a version
        promoted or activated in between (a retrain that finished, a later rollback) is what
        annotators must see, so an older request is re-aimed at it.
        """
        row = await self._db(models.active, project_id)
        if row is None:
            return Outcome("skipped", error="no active version to push")
        version = str(row.version)
        note = None
        if requested is not None and requested != version:
            note = f"asked for {requested}; pushed {version}, active since"
        spec = version_spec(row)
        settings = self.services.settings.training_for(project_id)
        snapshot = await self._snapshot(project_id, progress)
        if snapshot.project.unsupported_reason:
            return Outcome("skipped", error=f"unsupported: {snapshot.project.unsupported_reason}")
        stored_model = Fitted(spec, load_model(row.head), None, [], None, [], {}, set())
        if (why := mismatch(stored_model.head, snapshot.project)) is not None:
            return Outcome("skipped", error=why)
        await self._db(jobs.check_lease, job_id, lease)
        await self._push(snapshot, version, stored_model, settings, progress, job_id, lease)
        progress["stage"] = "done"
        return Outcome("succeeded", model_version=version, note=note)

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
        attempted = {t.id for t in snapshot.tasks}
        if snapshot.project.targets:  # several Choices, or multiple choice: a head each
            return await fit_targets(spec, snapshot.project.targets, ids, x, y, report, attempted)
        # Near-duplicates share a side of the held-out split (service/vision/duplicates.py).
        split = await in_daemon_thread(split_ids, x, ids, settings.near_duplicate)
        result: TrainResult = await in_daemon_thread(train_head, x, y, ids, split_ids=split)
        fitted = Fitted(spec, result.head, result.metrics, ids, x, y, report.vectors, attempted)
        fitted.predictions = result.held_out  # what the gate compares with the active version
        fitted.split = dict(zip(ids, split, strict=True))
        return fitted

    async def _finetune(
        self,
        snapshot: Snapshot,
        spec: BackboneSpec,
        settings: TrainingSettings,
        progress: dict[str, Any],
    ) -> Fitted | None:
        """The whole network on the labeled images; unlabeled ones are embedded after."""
        labeled = [t for t in snapshot.tasks if t.id in snapshot.labeled]
        # On disk for the job's length only: deleted when it ends, fails or is cancelled.
        with ImageStore(len(labeled), spec.image_size) as store:
            rows = await load_images(
                self.embedder,
                labeled,
                snapshot.project.image_key,
                store,
                _stage(progress, "loading images"),
                max_pixels=settings.max_image_pixels,
            )
            ids = [tid for tid in snapshot.labeled if tid in rows]
            y = [snapshot.labeled[tid] for tid in ids]
            if len(set(y)) < 2:
                return None
            result: FinetuneResult = await in_daemon_thread(
                finetune,
                spec,
                store.rows([rows[tid] for tid in ids]),
                y,
                ids,
                device=resolve_device(settings.device),
                epochs=settings.finetune_epochs,
                progress=_stage(progress, "fine-tuning epoch"),
            )
        blob = state_bytes(result.backbone)
        tuned = BackboneSpec(spec.architecture, str(materialize_weights(blob)), spec.image_size)
        return Fitted(tuned, result.head, result.metrics, ids, None, y, {}, set(), blob)

    async def _snapshot(self, project_id: int, progress: dict[str, Any]) -> Snapshot:
        """Refresh the project's config from Label Studio, then read its tasks and labels.

        The tasks and labels come from the folded event log (webhooks, and catch-up, which
        reconciles the task list with Label Studio every ``catch_up``), not from a listing of
        the whole project: a job costs what changed. A project never caught up is learned
        first, so a first training sees every task. The config is read on every job (one
        request): it may have changed without a webhook.
        """
        progress["stage"] = "reading tasks"
        await learn_if_new(self.services, project_id)
        project = await self.services.label_studio.get_project(project_id)
        async with self.services.write_turn():
            await self._db(relabel.save_project, project_id, project_row(project))
        snapshot: Snapshot = await asyncio.to_thread(_read, self.services.engine, project_id)
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
            tasks,
            snapshot.project.image_key,
            spec,
            settings.device,
            _stage(progress, "embedding"),
            max_pixels=settings.max_image_pixels,
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
        job_id: int,
        lease: int,
    ) -> None:
        """Predict every unlabeled task (embedding what is not known yet) and push what changed.

        Only while ``version`` is the active one: a version activated meanwhile has a push of
        its own queued behind this job, and the project's model_version must not go back.
        """
        project_id = snapshot.project.id

        async def still_active() -> bool:
            row = await self._db(models.active, project_id)
            if row is not None and row.version == version:
                return True
            logger.info("project %d: %s is no longer active; not shown", project_id, version)
            return False

        if not await still_active():
            progress["stage"] = "superseded"
            return
        unlabeled = [t for t in snapshot.tasks if t.id not in snapshot.labeled]
        vectors = model.vectors
        missing = [t for t in unlabeled if t.id not in vectors and t.id not in model.attempted]
        if missing:
            report = await self._embed(missing, snapshot, model.spec, settings, progress)
            vectors = {**vectors, **report.vectors}
        pushed = await push_predictions(
            self.services.label_studio,
            self._db,
            snapshot.project.id,
            version,
            model.head,
            {t.id: vectors[t.id] for t in unlabeled if t.id in vectors},
            from_name=snapshot.project.from_name or "",  # "": encoded labels (several Choices)
            to_name=snapshot.project.to_name,
            tasks={t.id for t in snapshot.tasks},
            guard=lambda conn: jobs.check_lease(conn, job_id, lease),
            progress=_stage(progress, "pushing"),
            still_active=still_active,
            ranking=Ranking(settings.sampling, settings.diverse, settings.near_duplicate),
        )
        progress.update(pushed.progress())
        self.services.metrics.pushed(pushed.written)

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            with self.services.engine.begin() as conn:
                return fn(conn, *args)

        return await asyncio.to_thread(run)


def _register_leased(conn: Any, job_id: int, lease: int, *args: Any) -> Any:
    """``register(conn, *args)``, in one transaction with the check that the job is still this
    worker's."""
    jobs.check_lease(conn, job_id, lease)
    return register(conn, *args)


def _read(engine: Any, project_id: int) -> Snapshot:
    """The project, its live tasks and their labels, from one consistent read."""
    with reading(engine) as conn:
        return Snapshot(
            project=labels.get_project(conn, project_id),
            tasks=list(labels.project_tasks(conn, project_id)),
            labeled=labels.training_labels(conn, project_id),
        )


def _stage(progress: dict[str, Any], stage: str) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        progress.update(stage=stage, done=done, total=total)

    return update
