"""What labelloop predicts for a task, and the prediction Label Studio is sent for it.

``predict_all`` turns a head and embeddings into task id -> (label, score): the label the head
chooses (an encoded one for several Choices or multiple choice) and the score of the project's
task-order rule (``service.vision.ranking``; low = look first). ``prediction`` is Label
Studio's JSON for one task: one Choices result, or one per tag for an encoded label.
"""

import asyncio
from collections.abc import Mapping
from typing import Any

import torch

from service.jobs.multitarget import predict_encoded
from service.labelstudio.targets import result_items
from service.vision.duplicates import standardised_units
from service.vision.head import Head
from service.vision.multitarget import MultiHead
from service.vision.ranking import Ranking

DEFAULT_RANKING = Ranking()  # [training] sampling, diverse, near_duplicate at their defaults


async def predict_all(
    head: Head | MultiHead,
    vectors: Mapping[int, torch.Tensor],
    ranking: Ranking = DEFAULT_RANKING,
) -> dict[int, tuple[str, float]]:
    """Task id -> (label, score) of the head, the score made by ``ranking`` (low = look
    first; a several-Choices head scores its own way) and rounded as Label Studio stores it."""
    ordered = sorted(vectors)
    if not ordered:
        return {}
    stacked = torch.stack([vectors[t] for t in ordered])
    if isinstance(head, MultiHead):
        encoded = await asyncio.to_thread(predict_encoded, head, stacked)
        return {tid: (label, _score(s)) for tid, (label, s) in zip(ordered, encoded, strict=True)}
    single = head

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        probs = single.predict_proba(stacked)
        units = standardised_units(stacked, single.mean, single.std) if ranking.diverse else None
        return ranking.scores(probs, units), probs.argmax(dim=1)

    scores, indices = await asyncio.to_thread(run)
    return {
        tid: (head.labels[int(i)], _score(float(s)))
        for tid, s, i in zip(ordered, scores, indices, strict=True)
    }


def _score(score: float) -> float:
    return round(min(max(score, 0.0), 1.0), 6)


def prediction(
    task_id: int, label: str, score: float, version: str, from_name: str, to_name: str
) -> dict[str, Any]:
    """One Label Studio prediction: a Choices result scored by the model's confidence (one per
    Choices tag when ``from_name`` is "": an encoded label)."""
    if not from_name:
        return {
            "task": task_id,
            "model_version": version,
            "score": _score(score),
            "result": result_items(label, to_name),
        }
    return {
        "task": task_id,
        "model_version": version,
        "score": _score(score),
        "result": [
            {
                "from_name": from_name,
                "to_name": to_name,
                "type": "choices",
                "value": {"choices": [label]},
            }
        ],
    }
