"""When what labelloop holds in Label Studio is not what it believes: adopt Label Studio's truth.

Two places need it. A push that finds rows left uncertain asks Label Studio about those tasks
and ``adopt``s what they hold. A push after which Label Studio's count under the project's name
differs from labelloop's rows (an annotator deleted predictions, an ML-backend call added some)
runs ``repair``: the one place that lists the project's predictions. Either way a task keeps at
most one prediction of the name (the newest; the others are deleted) and the rows become what
Label Studio holds, so the next delta rewrites whatever disagrees with the active model.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from service.labelstudio.client import LabelStudio
from storage import pushed
from storage.pushed import PUSHED, Held

logger = logging.getLogger(__name__)

Db = Callable[..., Awaitable[Any]]


def adopt(
    found: Mapping[int, Sequence[Mapping[str, Any]]],
    name: str,
    rows: Mapping[int, Held],
    version: str,
) -> tuple[dict[int, Held], list[int]]:
    """From each task's predictions (of every model): what the task holds of ``name``, and the
    ids of the surplus ones (duplicates, or ones labelloop cannot read) to delete."""
    held: dict[int, Held] = {}
    surplus: list[int] = []
    for task_id, predictions in found.items():
        mine = sorted(
            (p for p in predictions if p.get("model_version") == name and _id(p) is not None),
            key=lambda p: int(p["id"]),
        )
        if not mine:
            continue
        keep = mine[-1]
        surplus.extend(int(p["id"]) for p in mine[:-1])
        label = _label(keep)
        if label is None:
            surplus.append(int(keep["id"]))
            continue
        score = keep.get("score")
        made_by = rows[task_id].version if task_id in rows else version
        held[task_id] = Held(label, float(score) if isinstance(score, int | float) else 0.0,
                             made_by, PUSHED)  # fmt: skip
    return held, surplus


async def repair(client: LabelStudio, db: Db, project_id: int, name: str, version: str) -> None:
    """Rows := the project's predictions of ``name`` as Label Studio lists them, one per task."""
    listed = await client.list_predictions(project_id)
    by_task: dict[int, list[Mapping[str, Any]]] = {}
    for p in listed:
        task = p.get("task")
        if p.get("model_version") == name and isinstance(task, int):
            by_task.setdefault(task, []).append(p)
    rows: dict[int, Held] = await db(pushed.held, project_id)
    held, surplus = adopt(by_task, name, rows, version)
    gate = asyncio.Semaphore(8)

    async def delete(prediction_id: int) -> None:
        async with gate:
            await client.delete_prediction(prediction_id)

    await asyncio.gather(*(delete(i) for i in surplus))
    await db(pushed.replace_all, project_id, held)
    logger.info(
        "project %d: repaired: Label Studio holds %d tasks' predictions of %s; %d surplus deleted",
        project_id, len(held), name, len(surplus),
    )  # fmt: skip


def _id(prediction: Mapping[str, Any]) -> int | None:
    value = prediction.get("id")
    return value if isinstance(value, int) else None


def _label(prediction: Mapping[str, Any]) -> str | None:
    """The first choice of a Choices result, as labelloop pushes them."""
    result = prediction.get("result")
    if not isinstance(result, list):
        return None
    for item in result:
        value = item.get("value") if isinstance(item, dict) else None
        choices = value.get("choices") if isinstance(value, dict) else None
        if isinstance(choices, list) and choices and isinstance(choices[0], str):
            return choices[0]
    return None
