"""Push a version's predictions into Label Studio at the cost of what changed.

Every labelloop prediction of a project carries one model_version name in Label Studio (the
project's ``label_studio_version``, chosen at its first push), whichever labelloop version made
it; labelloop keeps its own version history. ``storage.pushed`` knows what each task holds, so a
push writes only the tasks whose label changed or whose score moved by more than ``EPSILON``
(replace: delete our prediction of the task, then import) and the tasks that hold none (import).
Each chunk's rows are marked uncertain before Label Studio is written and pushed after; a push
finding uncertain rows (a crash, an answer lost after Label Studio stored a chunk) asks Label
Studio about exactly those tasks, never about the whole project, so it resumes without a
duplicate. Only labelloop's own predictions are ever deleted. Afterwards Label Studio's count
under the name must equal the rows (else the repair in ``push_repair`` runs), the project's
``model_version`` is set to the name (only while the version is still active), and the names an
older labelloop pushed one per version are deleted.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from sqlalchemy.engine import Connection

from service.jobs import push_repair
from service.jobs.prediction_body import DEFAULT_RANKING, predict_all, prediction
from service.labelstudio.client import LabelStudio
from service.labelstudio.errors import LabelStudioUnavailable
from service.vision.head import Head
from service.vision.multitarget import MultiHead
from service.vision.ranking import Ranking
from storage import pushed
from storage.pushed import UNCERTAIN, Held

logger = logging.getLogger(__name__)

# Tasks written per round (marked uncertain, their old predictions deleted, the new imported).
# Large, because Label Studio 1.23.2 recounts every task of the project on each prediction
# import (its memory-efficient import, behind a feature flag, recounts only the tasks
# imported): on a 10k-task project one import costs ~8 s whether it carries 20 predictions or
# 500. An interrupted round costs a task-scoped check of its tasks at the next push.
CHUNK = 5000
# Settle what is uncertain, push the delta; again after an interrupted write, up to this many
# interruptions in a row without a chunk written in between.
PUSH_ROUNDS = 3
# A prediction is rewritten only if its label changed or its score moved by more than this.
# Measured on digits (bench/scale.py --epsilon, +20 labels a retrain): 2.6-4.6% of labels
# change, and of the rest 3.8-5.0% move by more than 0.02, 3.3-4.5% by more than 0.03, 3.0-3.7%
# by more than 0.05: past 0.02 the rewrites barely shrink, so a small ε keeps annotators' score
# sort close to the model's for little cost.
EPSILON = 0.03
BASE_NAME = "labelloop"
# Label Studio's feature flag (an environment variable of Label Studio's) for its import that
# recounts only the tasks it imports; an import slower than SLOW_IMPORT_S for fewer than 100
# predictions a second logs a hint naming it.
LS_IMPORT_FLAG = "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"
SLOW_IMPORT_S = 4.0
DELETE_CONCURRENCY = 8

Db = Callable[..., Awaitable[Any]]  # runs fn(conn, *args) in one transaction


@dataclass
class PushReport:
    label_studio_version: str
    imported: int = 0  # tasks that held no prediction of ours
    replaced: int = 0  # label changed or score moved past EPSILON
    unchanged: int = 0
    adopted: int = 0  # found in Label Studio after an interrupted write: not sent again
    deleted_versions: dict[str, int] = field(default_factory=dict)
    repaired: bool = False
    started: float = field(default_factory=time.monotonic)
    delete_seconds: float = 0.0  # waiting on Label Studio's deletes of replaced predictions
    import_seconds: float = 0.0  # ...and on its imports

    @property
    def written(self) -> int:
        return self.imported + self.replaced

    def progress(self) -> dict[str, Any]:
        """What the job's progress shows of the push."""
        return {
            "pushed": self.written,
            "unchanged": self.unchanged,
            "label_studio_version": self.label_studio_version,
            "push_seconds": round(time.monotonic() - self.started, 3),
            "delete_seconds": round(self.delete_seconds, 3),
            "import_seconds": round(self.import_seconds, 3),
        }


async def push_predictions(
    client: LabelStudio,
    db: Db,
    project_id: int,
    version: str,
    head: Head | MultiHead,
    vectors: Mapping[int, torch.Tensor],
    *,
    from_name: str,
    to_name: str,
    tasks: set[int],
    guard: Callable[[Connection], None] = lambda conn: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    still_active: Callable[[], Awaitable[bool]] | None = None,
    ranking: Ranking = DEFAULT_RANKING,
) -> PushReport:
    """Predict ``vectors`` (task id -> embedding) and bring Label Studio to them.

    ``from_name`` "": several Choices or multiple choice, labels encoded, one result per tag.
    ``tasks``: every task the project has (rows of others are forgotten: Label Studio deleted
    their predictions with them). ``ranking``: how scores are made ([training] sampling,
    diverse). ``guard(conn)`` runs in each transaction that begins a write
    (the job's lease check). The project's model_version is set only if ``still_active()``.
    """
    desired = await predict_all(head, vectors, ranking)
    name = await label_studio_name(client, db, project_id)
    report = PushReport(name)
    write = _Writer(client, db, project_id, name, version, from_name, to_name, guard)
    failures, written = 0, -1
    while True:
        try:
            report.adopted += await write.settle()
            await write.delta(desired, tasks, report, progress)
            break
        except LabelStudioUnavailable as exc:
            done = report.written + report.adopted
            failures = 1 if done > written else failures + 1
            written = done
            if failures == PUSH_ROUNDS:
                raise
            logger.warning("push of %s interrupted (%s); checking the tasks it was writing",
                           version, exc)  # fmt: skip
    versions = await client.model_versions(project_id)
    expected = await db(pushed.count, project_id)
    if versions.get(name, 0) != expected:
        logger.warning(
            "project %d: Label Studio holds %d predictions of %s, labelloop %d (deleted in Label "
            "Studio, or added by an ML-backend call); repairing from its list",
            project_id, versions.get(name, 0), name, expected,
        )  # fmt: skip
        await push_repair.repair(client, db, project_id, name, version)
        report.repaired = True
        await write.delta(desired, tasks, report, progress)
        versions = await client.model_versions(project_id)
    if versions.get(name, 0) and (still_active is None or await still_active()):
        project = await client.get_project(project_id)
        if project.get("model_version") != name:
            await client.set_model_version(project_id, name)
    ours = await db(pushed.labelloop_names, project_id)
    for old, n in versions.items():
        if old in ours and old != name and n:
            report.deleted_versions[old] = await client.delete_model_version(project_id, old)
    logger.info(
        "project %d: %s pushed as %s: %d new, %d replaced, %d unchanged; deleted %s",
        project_id, version, name, report.imported, report.replaced, report.unchanged,
        report.deleted_versions or "nothing",
    )  # fmt: skip
    return report


async def label_studio_name(client: LabelStudio, db: Db, project_id: int) -> str:
    """The project's name in Label Studio, chosen now if it has none: "labelloop", or
    "labelloop-2", "-3"... if Label Studio holds predictions of that name (an earlier install's,
    or another model's)."""
    name: str | None = await db(pushed.label_studio_version, project_id)
    if name:
        return name
    taken = {v for v, n in (await client.model_versions(project_id)).items() if n}
    candidate, number = BASE_NAME, 2
    while candidate in taken:
        candidate, number = f"{BASE_NAME}-{number}", number + 1
    chosen: str = await db(pushed.claim_label_studio_version, project_id, candidate)
    return chosen


@dataclass
class _Writer:
    client: LabelStudio
    db: Db
    project_id: int
    name: str
    version: str
    from_name: str
    to_name: str
    guard: Callable[[Connection], None]

    async def settle(self) -> int:
        """Rows left uncertain: ask Label Studio about those tasks alone, adopt what it holds;
        returns how many tasks held a prediction."""
        ids: list[int] = await self.db(pushed.uncertain, self.project_id)
        if not ids:
            return 0
        logger.info("project %d: checking %d tasks an earlier push was writing",
                    self.project_id, len(ids))  # fmt: skip
        found = await self.client.task_predictions(self.project_id, ids)
        rows: dict[int, Held] = await self.db(pushed.held, self.project_id)
        adopt, extra = push_repair.adopt(
            {tid: found.get(tid, []) for tid in ids}, self.name, rows, self.version
        )
        await self._delete_ids(extra)
        await self.db(_settled, self.project_id, adopt, [t for t in ids if t not in adopt])
        return len(adopt)

    async def delta(
        self,
        desired: Mapping[int, tuple[str, float]],
        tasks: set[int],
        report: PushReport,
        progress: Callable[[int, int], None],
    ) -> None:
        rows: dict[int, Held] = await self.db(pushed.held, self.project_id)
        gone = [t for t in rows if t not in tasks]
        if gone:
            await self.db(pushed.forget, self.project_id, gone)
        todo, unchanged = [], 0
        for tid in sorted(desired):
            label, score = desired[tid]
            row = rows.get(tid)
            if row is None or row.label != label or abs(row.score - score) > EPSILON:
                todo.append(tid)
            else:
                unchanged += 1
        report.unchanged = unchanged
        bulk: bool | None = None  # whether the bulk delete may be used: asked once a push
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            replace = [t for t in chunk if t in rows]
            marks = {t: Held(*desired[t], self.version, UNCERTAIN) for t in chunk}
            await self.db(_begin, self.guard, self.project_id, marks)
            if replace:
                if bulk is None:
                    bulk = await self._only_ours_listed()
                began = time.monotonic()
                await self._delete_ours(replace, bulk=bulk)
                report.delete_seconds += time.monotonic() - began
            body = [
                prediction(t, *desired[t], self.name, self.from_name, self.to_name) for t in chunk
            ]
            began = time.monotonic()
            await self.client.import_predictions(self.project_id, body)
            took = time.monotonic() - began
            report.import_seconds += took
            if slow_import(took, len(body)):
                logger.info(
                    "project %d: Label Studio took %.1f s to import %d predictions; on a large "
                    "project start it with %s=true (it then recounts only the tasks imported, "
                    "not the whole project's: README, Large projects)",
                    self.project_id, took, len(body), LS_IMPORT_FLAG,
                )  # fmt: skip
            await self.db(pushed.mark_pushed, self.project_id, chunk)
            report.replaced += len(replace)
            report.imported += len(chunk) - len(replace)
            progress(start + len(chunk), len(todo))

    async def _only_ours_listed(self) -> bool:
        """Whether every name Label Studio lists predictions under is labelloop's."""
        ours = await self.db(pushed.labelloop_names, self.project_id) | {self.name}
        versions = await self.client.model_versions(self.project_id)
        return all(v in ours for v, n in versions.items() if n)

    async def _delete_ours(self, task_ids: Sequence[int], *, bulk: bool) -> None:
        """Delete our prediction of these tasks: in ``bulk`` when every name Label Studio
        lists is labelloop's (the bulk action deletes every model's), else one by one, by id.

        ``bulk`` is decided once a push, before its first delete (it was asked before each
        500-task round): another model's first predictions landing on these very tasks during
        the push is the window, as it was between the question and each round."""
        if bulk:
            await self.client.delete_tasks_predictions(self.project_id, task_ids)
            return
        found = await self.client.task_predictions(self.project_id, task_ids)
        ids = [
            int(p["id"])
            for predictions in found.values()
            for p in predictions
            if p.get("model_version") == self.name and isinstance(p.get("id"), int)
        ]
        await self._delete_ids(ids)

    async def _delete_ids(self, ids: Sequence[int]) -> None:
        gate = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def one(prediction_id: int) -> None:
            async with gate:
                await self.client.delete_prediction(prediction_id)

        await asyncio.gather(*(one(i) for i in ids))


def slow_import(seconds: float, count: int) -> bool:
    """Whether an import of ``count`` predictions taking ``seconds`` looks like Label Studio's
    whole-project recount: over SLOW_IMPORT_S, at fewer than 100 predictions a second."""
    return seconds > SLOW_IMPORT_S and count < seconds * 100


def _begin(
    conn: Connection,
    guard: Callable[[Connection], None],
    project_id: int,
    marks: Mapping[int, Held],
) -> None:
    guard(conn)
    pushed.mark(conn, project_id, marks)


def _settled(
    conn: Connection, project_id: int, adopt: Mapping[int, Held], empty: Sequence[int]
) -> None:
    pushed.mark(conn, project_id, adopt)
    pushed.forget(conn, project_id, empty)
