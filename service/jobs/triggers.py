"""When to train: the threshold, the schedule, and manual requests, all turned into job rows.

Counting: a job snapshots ``projects.changes`` when it starts; changes after the newest
snapshot of a training that succeeded (or runs now) count toward the next threshold, so a
failed or skipped one leaves them counted and the next check or schedule tick retrains.
Everything enqueues through ``storage.jobs.enqueue``, which joins an already queued job, so
triggers during a run coalesce into one follow-up.
"""

import logging
from collections.abc import Iterable

from sqlalchemy.engine import Connection

from service.settings import Settings, TrainingSettings
from storage import jobs, labels


def training_kind(settings: TrainingSettings, *, scheduled: bool = False) -> str:
    """The job kind of a training: "finetune" or "train" (a head on cached embeddings)."""
    mode = (settings.schedule_mode or settings.mode) if scheduled else settings.mode
    return "finetune" if mode == "finetune" else "train"


logger = logging.getLogger(__name__)


def check_threshold(conn: Connection, settings: Settings, project_ids: Iterable[int]) -> list[int]:
    """Queue a training for each project whose unseen changes reached its threshold."""
    queued = []
    for project_id in sorted(project_ids):
        project = labels.get_project(conn, project_id)
        if project is None or project.unsupported_reason:
            continue
        threshold = settings.training_for(project_id).threshold
        changes = jobs.changes_since_last_job(conn, project_id)
        if changes >= threshold:
            kind = training_kind(settings.training_for(project_id))
            job_id, created = jobs.enqueue(conn, project_id, "threshold", kind=kind)
            if created:
                logger.info(
                    "project %d: %d changes >= threshold %d, queued job %d",
                    project_id,
                    changes,
                    threshold,
                    job_id,
                )
                queued.append(job_id)
    return queued


def run_schedule(conn: Connection, settings: Settings, schedule: str) -> list[int]:
    """A schedule fired: queue a training for its projects that changed since their last job."""
    queued = []
    for project in labels.list_projects(conn):
        if project.unsupported_reason or settings.training_for(project.id).schedule != schedule:
            continue
        if jobs.changes_since_last_job(conn, project.id) > 0:
            kind = training_kind(settings.training_for(project.id), scheduled=True)
            job_id, created = jobs.enqueue(conn, project.id, "schedule", kind=kind)
            if created:
                queued.append(job_id)
    return queued


def request_training(
    conn: Connection, settings: Settings, project_id: int, reason: str
) -> tuple[int, bool]:
    """A person asked (curl, CLI, "Start training"): always queue, or join the queued job."""
    kind = training_kind(settings.training_for(project_id))
    return jobs.enqueue(conn, project_id, reason, kind=kind)
