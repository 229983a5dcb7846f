"""Predictions on request (/predict): the active version, from cached embeddings when possible.

A task whose image was embedded before costs a head evaluation; others are fetched, embedded
on the spot and cached, so opening a task twice costs one forward pass at most.
"""

import asyncio
from typing import Any

import torch
from starlette.concurrency import run_in_threadpool

from service.context import Services
from service.jobs.embedding import Embedder
from service.jobs.multitarget import mismatch, predict_encoded
from service.jobs.prediction_body import prediction
from service.jobs.versions import version_spec
from service.vision.multitarget import MultiHead, load_model
from service.vision.ranking import Ranking
from storage import labels, models, pushed


class Predictor:
    """Answers /predict from the active version: cached embeddings first, else embeds."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.embedder = Embedder(services)
        self._lock = asyncio.Lock()  # one embedding batch at a time on this process's CPU

    async def predict(self, project_id: int, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        state = await run_in_threadpool(self._state, project_id)
        if state is None:
            return []
        project, version, shown_as = state
        head = load_model(version.head)
        if mismatch(head, project) is not None:  # the config's tags changed: retrain first
            return []
        ids = [int(t["id"]) for t in tasks if isinstance(t.get("id"), int)]
        if len(ids) != len(tasks):
            return []
        await run_in_threadpool(self._save_tasks, project_id, tasks)
        rows = await run_in_threadpool(self._rows, ids)
        spec = version_spec(version)
        training = self.services.settings.training_for(project_id)
        async with self._lock:
            report = await self.embedder.embed_tasks(
                rows,
                project.image_key,
                spec,
                training.device,
                lambda done, total: None,
                max_pixels=training.max_image_pixels,
            )
        # The push's score rule; `diverse` needs the other tasks, so /predict leaves it out.
        ranking = Ranking(training.sampling, diverse=False)
        results: list[dict[str, Any]] = []
        for task_id in ids:
            vector = report.vectors.get(task_id)
            if vector is None:
                results.append({"result": [], "score": 0.0, "model_version": shown_as})
                continue
            if isinstance(head, MultiHead):  # several Choices: one result per tag
                [(label, score)] = predict_encoded(head, torch.stack([vector]))
                one = prediction(task_id, label, score, shown_as, "", project.to_name)
                results.append({k: one[k] for k in ("result", "score", "model_version")})
                continue
            probabilities = head.predict_proba(torch.stack([vector]))
            index = int(probabilities[0].argmax())
            one = prediction(
                task_id,
                head.labels[index],
                float(ranking.scores(probabilities, None)[0]),
                shown_as,
                project.from_name,
                project.to_name,
            )
            results.append({k: one[k] for k in ("result", "score", "model_version")})
        return results

    def _state(self, project_id: int) -> tuple[Any, Any, str] | None:
        """The project, its active version, and the model_version to answer: the project's
        Label Studio name, as its pushed predictions carry (service/web/mlbackend.py)."""
        with self.services.engine.begin() as conn:
            project = labels.get_project(conn, project_id)
            version = models.active(conn, project_id)
            name = pushed.label_studio_version(conn, project_id)
        if project is None or project.unsupported_reason or version is None:
            return None
        return project, version, name or str(version.version)

    def _save_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> None:
        rows = [{"id": t["id"], "data": t.get("data") or {}} for t in tasks]
        with self.services.engine.begin() as conn:
            labels.save_tasks(conn, project_id, rows)

    def _rows(self, ids: list[int]) -> list[Any]:
        with self.services.engine.begin() as conn:
            return [labels.get_task(conn, task_id) for task_id in ids]
