"""After a head retrain: the label-review queue (suspects), stored and shown in Label Studio.

The retrain's labeled embeddings are scored out of fold and read by confident learning
(``service.vision.suspects``); the annotations the model confidently disagrees with replace the
project's previous suspects (``storage.suspects``), and the project's Data Manager tab
``labelloop: review`` is created or updated to select their tasks. Suspects stay in training:
the queue is for people to look at.

A fine-tune has no embeddings of its own network to score: its versions leave the queue as the
last head version left it. Projects of several Choices or multiple choice have no queue yet.
A failure to write the tab is logged, never the job's failure.
"""

import asyncio
import logging
import time
from typing import Any

from sqlalchemy.engine import Connection

from service.context import Services
from service.jobs.threads import in_daemon_thread
from service.jobs.versions import Fitted
from service.labelstudio.errors import LabelStudioError
from service.labelstudio.views import REVIEW_TAB, review_filters
from service.vision.head import Head
from service.vision.suspects import Suspect, suspects
from storage import jobs
from storage import suspects as stored
from storage.db import reading

logger = logging.getLogger(__name__)


async def review(
    services: Services, project_id: int, version: str, fitted: Fitted, *, job_id: int, lease: int
) -> int | None:
    """Find, store and publish the suspects of ``fitted`` (head mode); returns how many were
    stored, or None when there was nothing to score: a fine-tune, or a project of several
    Choices or multiple choice (its labels are combinations, which confident learning's
    per-class thresholds do not model)."""
    if fitted.x is None or not isinstance(fitted.head, Head) or len(set(fitted.labels)) < 2:
        return None
    started = time.perf_counter()
    # Folds by near-duplicate group, as the retrain split (copies cannot vouch for each other).
    split = [fitted.split.get(t, t) for t in fitted.task_ids]
    found: list[Suspect] = await in_daemon_thread(
        suspects, fitted.x, fitted.labels, fitted.task_ids, split_ids=split
    )
    seconds = time.perf_counter() - started

    def store(conn: Connection) -> int:
        jobs.check_lease(conn, job_id, lease)
        rows = _rows(stored.training_annotations(conn, project_id), fitted.task_ids, found)
        stored.replace(conn, project_id, version, rows)
        return len(rows)

    def run() -> int:
        with services.engine.begin() as conn:
            return store(conn)

    async with services.write_turn():
        count = await asyncio.to_thread(run)
    logger.info(
        "project %d: %s: %d suspects among %d labels (%.1f s)",
        project_id,
        version,
        count,
        len(fitted.task_ids),
        seconds,
    )
    await publish(services, project_id)
    return count


async def publish(services: Services, project_id: int) -> None:
    """Point the project's ``labelloop: review`` tab at its current suspects; a Label Studio
    that refuses or is down is logged and left for the next retrain."""

    def current() -> list[dict[str, Any]]:
        with reading(services.engine) as conn:
            return stored.listing(conn, project_id)

    annotation_ids = [s["annotation"] for s in await asyncio.to_thread(current)]
    try:
        await services.label_studio.ensure_view(
            project_id, REVIEW_TAB, review_filters(annotation_ids)
        )
    except LabelStudioError as exc:
        services.metrics.label_studio_error(exc)
        logger.warning("project %d: the %r tab was not written: %s", project_id, REVIEW_TAB, exc)


def _rows(
    annotations: dict[int, dict[str, Any]], task_ids: list[int], found: list[Suspect]
) -> list[dict[str, Any]]:
    """Suspects as rows, with the annotation that gave each task its label; a task whose
    label changed while the job ran is left out (it has been looked at)."""
    rows = []
    for suspect in found:
        task = task_ids[suspect.index]
        current = annotations.get(task)
        if current is None or current["label"] != suspect.given:
            continue
        rows.append(
            {
                "task": task,
                "annotation": current["annotation"],
                "label": suspect.given,
                "predicted": suspect.predicted,
                "score": suspect.score,
                "annotator": current["annotator"],
            }
        )
    return rows
