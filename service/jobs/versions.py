"""A trained model becomes a stored version, and a stored version becomes a model again.

``register`` runs the promotion gate and stores (and maybe activates) the version in one
transaction; ``version_spec`` is the backbone a stored version reads its embeddings from.
"""

import hashlib
import io
import os
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.jobs.promotion import Decision, decide
from service.settings import TrainingSettings
from service.vision.backbone import BackboneSpec
from service.vision.head import Head, Metrics, evaluate, fold_of
from storage import models


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


def register(
    conn: Any,
    project_id: int,
    job_id: int,
    settings: TrainingSettings,
    fitted: Fitted,
    taken: Collection[str] = (),
) -> tuple[str, Decision]:
    """Store the version and, if the gate agrees, activate it: one transaction, so a crash
    leaves the previous version active and no half-written one. ``taken``: version names
    Label Studio already holds, which the new one must not reuse."""
    active = models.active(conn, project_id)
    decision = decide(
        fitted.metrics,
        fitted.head.labels,
        active,
        active_on_same_tasks(active, fitted),
        settings.promotion_margin,
    )
    version = models.next_version(conn, project_id, taken)
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


def active_on_same_tasks(active: Any, fitted: Fitted) -> Metrics | None:
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


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
