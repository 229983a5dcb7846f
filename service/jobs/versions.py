"""A trained model becomes a stored version, and a stored version becomes a model again.

``register`` runs the promotion gate and stores (and maybe activates) the version in one
transaction; ``version_spec`` is the backbone a stored version reads its embeddings from.
Each version stores the labels it was trained on (``training_labels``: task id -> label, as
they were), so a later gate can refit its recipe without the tasks it scores it on
(``compare``). The refits take seconds on a large project: ``prepare_gate`` runs them before
``register``'s write transaction, which only checks that the active version is still the one
compared with.
"""

import atexit
import hashlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.jobs.promotion import Comparison, Decision, decide
from service.settings import TrainingSettings
from service.vision.backbone import BackboneSpec
from service.vision.compare import paired, refit_predictions
from service.vision.head import FOLDS, Head
from service.vision.metrics import Metrics
from service.vision.multitarget import MultiHead
from storage import models
from storage.db import reading


@dataclass
class Fitted:
    """A trained model before it is stored: what predicts, and what it was trained on."""

    spec: BackboneSpec  # the backbone whose embeddings `head` reads
    head: Head | MultiHead  # MultiHead: several Choices, or multiple choice
    metrics: Metrics | None
    task_ids: list[int]
    x: torch.Tensor | None  # the labeled embeddings under `spec` (head mode), for the gate
    labels: list[str]
    vectors: dict[int, torch.Tensor]  # task id -> embedding under `spec`, as far as known
    attempted: set[int]  # tasks this job already tried to embed (failed ones are not retried)
    backbone_weights: bytes | None = None  # finetune mode: the network without its fc
    # head mode: task id -> label predicted by a head not trained on it (TrainResult.held_out)
    predictions: dict[int, str] | None = None
    # (active version's row id, comparison with it), when `prepare_gate` ran
    gate: tuple[int, Comparison | str] | None = None
    # head mode: task id -> the id it was split by (its near-duplicate group's smallest)
    split: dict[int, int] = field(default_factory=dict)


def prepare_gate(engine: Any, project_id: int, fitted: Fitted) -> None:
    """Compare with the active version now, outside any write transaction."""
    with reading(engine) as conn:
        active = models.active(conn, project_id)
    if active is not None:
        fitted.gate = (active.id, compare(active, fitted))


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
    comparison: Comparison | str | None = None
    if active is not None:
        if fitted.gate is not None and fitted.gate[0] == active.id:
            comparison = fitted.gate[1]
        else:  # not prepared, or the active version changed since (a rollback)
            comparison = compare(active, fitted)
    decision = decide(
        fitted.metrics,
        fitted.head.labels,
        active,
        comparison,
        settings.promotion_margin,
        trained_on=len(fitted.task_ids),
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
            "training_labels": {
                str(tid): label for tid, label in zip(fitted.task_ids, fitted.labels, strict=True)
            },
            "metrics": None if fitted.metrics is None else fitted.metrics.to_dict(),
            "head": fitted.head.to_bytes(),
            "backbone_weights": fitted.backbone_weights,
            "promotion": decision.reason,
            "settings": recipe(settings, finetuned=fitted.backbone_weights is not None),
        },
    )
    if decision.promote:
        models.activate(conn, project_id, version)
    # Files are a cache of the rows' weights: deleting them before the commit loses nothing.
    discard_weights(models.drop_old_weights(conn, project_id, settings.keep_versions))
    return version, decision


def recipe(settings: TrainingSettings, *, finetuned: bool) -> dict[str, Any]:
    """The settings a version is stored with: what made it, and how its predictions rank."""
    return {
        "architecture": settings.architecture,
        "weights": "finetuned" if finetuned else settings.weights,
        "base_weights": settings.weights,
        "image_size": settings.image_size,
        "mode": "finetune" if finetuned else "head",
        **({"finetune_epochs": settings.finetune_epochs} if finetuned else {}),
        "sampling": settings.sampling,
        "diverse": settings.diverse,
        "near_duplicate": settings.near_duplicate,
    }


def unchanged_since(
    active: Any, labeled: dict[int, str], settings: TrainingSettings, kind: str
) -> bool:
    """Whether a training of ``kind`` on ``labeled`` under ``settings`` would remake ``active``:
    the same labels (task id -> label) and the same recipe."""
    if active is None or active.training_labels is None:
        return False
    if active.training_labels != {str(t): label for t, label in labeled.items()}:
        return False
    return bool(active.settings == recipe(settings, finetuned=kind == "finetune"))


def compare(active: Any, fitted: Fitted) -> Comparison | str:
    """The new version and ``active`` on the new version's held-out tasks, neither trained on
    them; or why that cannot be done fairly (then the gate promotes and says why)."""
    name = active.version
    if fitted.metrics is None:
        return "too few labels to evaluate"
    if isinstance(fitted.head, MultiHead):
        return (
            "the gate compares versions of one single-choice Choices, not of several Choices "
            "or multiple choice"
        )
    if fitted.x is None or fitted.predictions is None:
        return (
            f"a fine-tuned version is not compared with {name} (refitting both networks "
            "without the held-out tasks would take a fine-tune each)"
        )
    if active.backbone != fitted.spec.identity():
        return f"{name} reads another backbone's embeddings ({active.backbone})"
    if active.training_labels is None:
        return (
            f"{name} was stored without the labels it was trained on (made before they were kept)"
        )
    classes = sorted(active.labels)
    if classes != sorted(set(fitted.labels)):
        return "the label set changed"
    known = dict(zip(fitted.task_ids, fitted.x, strict=True)) | fitted.vectors
    old = {
        int(t): label
        for t, label in active.training_labels.items()
        if int(t) in known and label in classes  # a deleted task has no embedding here
    }
    held = [t for t in fitted.task_ids if t in fitted.predictions]
    if not old or not held:
        return f"no held-out task to score {name} on"
    old_ids = list(old)
    refit = refit_predictions(
        torch.stack([known[t] for t in old_ids]),
        [old[t] for t in old_ids],
        old_ids,
        torch.stack([known[t] for t in held]),
        held,
        classes,
        split=fitted.split,
    )
    both = [t for t in held if t in refit]
    if not both:
        return f"{name}'s labels leave a class out of every held-out fold's training part"
    truth = dict(zip(fitted.task_ids, fitted.labels, strict=True))
    result = paired(
        [truth[t] for t in both],
        [fitted.predictions[t] for t in both],
        [refit[t] for t in both],
        classes,
    )
    if fitted.metrics.scheme == "holdout":
        how = f"{name} refit without them"
    else:
        how = f"{FOLDS}-fold: each fold predicted by both recipes refit without it"
    return Comparison(name, result.n, result.new_f1, result.old_f1, result.noise, how)


def version_spec(row: Any) -> BackboneSpec:
    """The backbone a stored version reads embeddings from (its own, after a fine-tune)."""
    stored = row.settings
    weights = stored["weights"]
    if row.backbone_weights is not None:
        weights = str(materialize_weights(row.backbone_weights))
    return BackboneSpec(stored["architecture"], weights, stored["image_size"])


def materialize_weights(blob: bytes) -> Path:
    """A fine-tuned backbone as a file the backbone loader reads, named by its content, so
    every process computes the same identity (and embedding cache key) for it.

    The files are a cache of the database's ``backbone_weights``, in a folder of this process
    (removed when it exits, so no other process's cleanup can take a file it uses):
    `discard_weights` deletes those of versions whose weights were dropped, and a fine-tune
    that stores nothing deletes its own."""
    folder = _weights_folder()
    path = folder / f"{hashlib.sha256(blob).hexdigest()[:32]}.pt"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(blob)
        os.replace(partial, path)  # atomic: readers never see half a file
    return path


def discard_weights(identities: Iterable[str]) -> int:
    """Delete this process's weight files of these backbone identities (``...|file:<sha>|...``,
    the sha256 of the file's bytes: the start of its name); returns how many went."""
    folder = _folders.get(os.getpid())
    if folder is None:
        return 0
    removed = 0
    for identity in identities:
        match = _FILE_IDENTITY.search(identity)
        if match is None:
            continue
        for path in folder.glob(f"{match[1]}*.pt"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def discard_weights_file(path: Path) -> None:
    """Delete one materialized weights file (of a fine-tune that stored nothing)."""
    folder = _folders.get(os.getpid())
    if folder is not None and path.parent == folder:
        path.unlink(missing_ok=True)


_FILE_IDENTITY = re.compile(r"\|file:([0-9a-f]{8,64})\|")
_folders: dict[int, Path] = {}  # by process id: a forked child makes its own


def _weights_folder() -> Path:
    pid = os.getpid()
    if pid not in _folders:
        folder = Path(tempfile.mkdtemp(prefix="labelloop-weights-"))
        _folders[pid] = folder
        atexit.register(_remove_folder, pid, folder)
    return _folders[pid]


def _remove_folder(pid: int, folder: Path) -> None:
    if os.getpid() == pid:  # not a forked child's exit
        shutil.rmtree(folder, ignore_errors=True)


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
