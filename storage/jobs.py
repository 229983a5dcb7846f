"""Training jobs as rows: queued -> running -> succeeded | failed | skipped.

Partial unique indexes keep at most one queued and one running job per project, so triggers
that arrive while a job waits coalesce into it, and triggers during a run queue exactly one
follow-up. Claiming is atomic: ``FOR UPDATE SKIP LOCKED`` on Postgres, ``BEGIN IMMEDIATE`` on
SQLite.

A claim is a lease: it increments ``attempts``, and that number is the claimant's lease.
Heartbeats, progress and the finish are written only where (job id, lease, running) still
holds, so a worker whose job was requeued (it stopped heart-beating) and claimed again writes
nothing over the new attempt; ``check_lease`` lets it check inside its own transactions.
"""

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from storage.db import for_update, utcnow
from storage.tables import jobs, projects

REASONS = ("threshold", "schedule", "manual", "new-tasks")
TRAININGS = ("train", "finetune")
KINDS = (*TRAININGS, "push")
FINISHED = ("succeeded", "failed", "skipped")
# The training jobs whose change snapshot counts as seen: a failed or skipped job trained
# nothing, so the changes it saw still count toward the next trigger.
CONSUMING = ("succeeded", "running")


class LeaseLost(Exception):
    """The job is no longer this worker's: it was requeued (and maybe claimed again)."""


def enqueue(
    conn: Connection,
    project_id: int,
    reason: str,
    *,
    kind: str = "train",
    model_version: str | None = None,
) -> tuple[int, bool]:
    """Queue a job, or join the one of this kind already queued. Returns (job id, created).

    A push job carries the version to push; joining a queued push retargets it, so the
    newest request (e.g. a rollback) wins.
    """
    if reason not in REASONS:
        raise ValueError(f"unknown reason {reason!r}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    existing = _queued(conn, project_id, kind)
    if existing is None:
        # A nested transaction, so losing a race to another process undoes only this insert.
        try:
            with conn.begin_nested():
                result = conn.execute(
                    jobs.insert().values(
                        project_id=project_id,
                        kind=kind,
                        reason=reason,
                        status="queued",
                        model_version=model_version,
                        created_at=utcnow(),
                    )
                )
                (job_id,) = result.inserted_primary_key or (None,)
                assert job_id is not None
                return int(job_id), True
        except sa.exc.IntegrityError:
            existing = _queued(conn, project_id, kind)
            if existing is None:
                raise
    if kind == "push":
        conn.execute(jobs.update().where(jobs.c.id == existing).values(model_version=model_version))
    return existing, False


def claim(conn: Connection) -> Row[Any] | None:
    """Take the oldest queued job of a project with nothing running; mark it running."""
    running = sa.select(jobs.c.project_id).where(jobs.c.status == "running")
    stmt = (
        sa.select(jobs.c.id)
        .where(jobs.c.status == "queued", jobs.c.project_id.not_in(running))
        .order_by(jobs.c.id)
        .limit(1)
    )
    job_id = conn.execute(for_update(conn, stmt, skip_locked=True)).scalar()
    if job_id is None:
        return None
    now = utcnow()
    changes = sa.select(projects.c.changes).where(projects.c.id == jobs.c.project_id)
    try:
        with conn.begin_nested():
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == "queued")
                .values(
                    status="running",
                    started_at=now,
                    heartbeat_at=now,
                    attempts=jobs.c.attempts + 1,
                    change_mark=sa.func.coalesce(changes.scalar_subquery(), 0),
                    progress=None,  # a new attempt: not the progress of an earlier one
                    error=None,
                )
            )
    except sa.exc.IntegrityError:
        return None  # another process started a job of this project first
    return get(conn, job_id)


def get(conn: Connection, job_id: int) -> Row[Any] | None:
    return conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()


def heartbeat(
    conn: Connection, job_id: int, progress: Mapping[str, Any] | None = None, *, lease: int
) -> bool:
    """Record that the lease holder is alive (and its progress); False: the lease is gone."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = dict(progress)
    return _update_leased(conn, job_id, lease, values)


def check_lease(conn: Connection, job_id: int, lease: int) -> None:
    """Raise LeaseLost unless the job still runs under ``lease``. The row stays locked (on
    Postgres; SQLite's writers are serialised) until the caller's transaction ends, so what
    that transaction writes is written under the lease."""
    stmt = sa.select(jobs.c.id).where(_leased(job_id, lease))
    if conn.execute(for_update(conn, stmt)).first() is None:
        raise LeaseLost(f"job {job_id} is no longer held under lease {lease}")


def finish(
    conn: Connection,
    job_id: int,
    status: str,
    *,
    lease: int,
    error: str | None = None,
    model_version: str | None = None,
    note: str | None = None,
) -> bool:
    """End the job under ``lease``; False (and nothing written): the lease is gone."""
    if status not in FINISHED:
        raise ValueError(f"not a final status: {status!r}")
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if model_version is not None:
        values["model_version"] = model_version
    if note is not None:
        values["note"] = note
    return _update_leased(conn, job_id, lease, values)


def _leased(job_id: int, lease: int) -> sa.ColumnElement[bool]:
    return sa.and_(jobs.c.id == job_id, jobs.c.attempts == lease, jobs.c.status == "running")


def _update_leased(conn: Connection, job_id: int, lease: int, values: dict[str, Any]) -> bool:
    result = conn.execute(jobs.update().where(_leased(job_id, lease)).values(**values))
    return bool(result.rowcount)


def recover_stale(
    conn: Connection, *, timeout: timedelta, max_attempts: int = 3, now: datetime | None = None
) -> list[int]:
    """Jobs whose worker stopped heart-beating: requeue them, or fail them after max_attempts."""
    cutoff = (now or utcnow()) - timeout
    stmt = sa.select(jobs).where(jobs.c.status == "running", jobs.c.heartbeat_at < cutoff)
    recovered = []
    for job in conn.execute(for_update(conn, stmt, skip_locked=True)).all():
        if job.attempts >= max_attempts or _queued(conn, job.project_id, job.kind) is not None:
            why = "worker stopped responding" + (
                f" after {job.attempts} attempts" if job.attempts >= max_attempts else ""
            )
            finish(conn, job.id, "failed", lease=job.attempts, error=why)
        else:
            conn.execute(
                jobs.update().where(jobs.c.id == job.id).values(status="queued", heartbeat_at=None)
            )
        recovered.append(job.id)
    return recovered


def changes_since_last_job(conn: Connection, project_id: int) -> int:
    """Annotation changes not yet consumed by a training (what the threshold counts): those
    after the newest snapshot of a training that succeeded or is running now (so triggers
    during a run coalesce into one follow-up). A failed or skipped training consumes nothing."""
    return int(conn.execute(_CHANGES_SINCE_LAST_JOB, {"project_id": project_id}).scalar() or 0)


# Built once: every fold runs it for each project it touched.
_CHANGES_SINCE_LAST_JOB = sa.select(
    projects.c.changes
    - sa.func.coalesce(
        sa.select(sa.func.max(jobs.c.change_mark))
        .where(
            jobs.c.project_id == sa.bindparam("project_id"),
            jobs.c.kind.in_(TRAININGS),
            jobs.c.status.in_(CONSUMING),
        )
        .scalar_subquery(),
        0,
    )
).where(projects.c.id == sa.bindparam("project_id"))


def recent(conn: Connection, project_id: int, limit: int = 20) -> Sequence[Row[Any]]:
    stmt = (
        sa.select(jobs)
        .where(jobs.c.project_id == project_id)
        .order_by(jobs.c.id.desc())
        .limit(limit)
    )
    return conn.execute(stmt).all()


def training_running(conn: Connection, project_id: int) -> bool:
    stmt = sa.select(jobs.c.id).where(
        jobs.c.project_id == project_id, jobs.c.status == "running", jobs.c.kind.in_(TRAININGS)
    )
    return conn.execute(stmt).first() is not None


def _queued(conn: Connection, project_id: int, kind: str) -> int | None:
    stmt = sa.select(jobs.c.id).where(
        jobs.c.project_id == project_id, jobs.c.kind == kind, jobs.c.status == "queued"
    )
    job_id = conn.execute(stmt).scalar()
    return None if job_id is None else int(job_id)
