"""Push a version's predictions into Label Studio without ever duplicating one.

Label Studio's own list of predictions is the truth: tasks that already hold a prediction of
this version are skipped, so a push interrupted at any point (a crash, a restart, a timeout
after Label Studio stored a chunk) resumes where it stopped. The project's ``model_version`` is
set only after the predictions exist (Label Studio refuses it before), and only to the version
labelloop holds active at that moment.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import torch

from service.labelstudio.client import LabelStudio
from service.labelstudio.errors import LabelStudioUnavailable
from service.vision.head import Head

logger = logging.getLogger(__name__)

CHUNK = 500
PUSH_ROUNDS = 3  # list, import what is missing; again after an interrupted import


async def push_predictions(
    client: LabelStudio,
    project_id: int,
    version: str,
    head: Head,
    vectors: Mapping[int, torch.Tensor],
    *,
    from_name: str,
    to_name: str,
    progress: Callable[[int, int], None] = lambda done, total: None,
    still_active: Callable[[], Awaitable[bool]] | None = None,
) -> int:
    """Predict ``vectors`` (task id -> embedding) and import them; returns how many were new.

    The project's model_version is set to ``version`` only if ``still_active()`` says so
    after the import (a rollback during the push has a push of its own queued).
    """
    ordered = sorted(vectors)
    predictions: dict[int, dict[str, Any]] = {}
    if ordered:
        stacked = torch.stack([vectors[t] for t in ordered])
        probs = await asyncio.to_thread(head.predict_proba, stacked)
        scores, indices = probs.max(dim=1)
        predictions = {
            tid: prediction(tid, head.labels[int(i)], float(s), version, from_name, to_name)
            for tid, s, i in zip(ordered, scores, indices, strict=True)
        }
    created = 0
    for round_ in range(1, PUSH_ROUNDS + 1):
        existing = await client.list_predictions(project_id)
        done = {p.get("task") for p in existing if p.get("model_version") == version}
        todo = [predictions[tid] for tid in ordered if tid not in done]
        try:
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start : start + CHUNK]
                created += await client.import_predictions(project_id, chunk)
                progress(start + len(chunk), len(todo))
            break
        except LabelStudioUnavailable as exc:
            if round_ == PUSH_ROUNDS:
                raise
            logger.warning("push of %s interrupted (%s); resuming from Label Studio's list",
                           version, exc)  # fmt: skip
    if (predictions or done) and (still_active is None or await still_active()):
        await client.set_model_version(project_id, version)
    logger.info("project %d: %d predictions of %s pushed", project_id, created, version)
    return created


def prediction(
    task_id: int, label: str, score: float, version: str, from_name: str, to_name: str
) -> dict[str, Any]:
    """One Label Studio prediction: a Choices result scored by the model's confidence."""
    return {
        "task": task_id,
        "model_version": version,
        "score": round(min(max(score, 0.0), 1.0), 6),
        "result": [
            {
                "from_name": from_name,
                "to_name": to_name,
                "type": "choices",
                "value": {"choices": [label]},
            }
        ],
    }
