"""Schedules and manual requests turn into job rows; the CLI speaks for a person."""

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from service import triggers
from service.__main__ import main
from service.context import Services, open_services
from service.fold import fold_pending
from service.schedules import start_scheduler
from service.settings import DatabaseSettings, Settings, TrainingSettings
from storage import events, jobs
from tests import payloads


def fold(engine: Engine, settings: Settings, *bodies: dict[str, object]) -> None:
    with engine.begin() as conn:
        for body in bodies:
            events.append(conn, action=str(body["action"]), project_id=1, body=json.dumps(body))
        fold_pending(conn, settings)


def test_schedule_queues_only_projects_that_changed(engine: Engine) -> None:
    settings = Settings(training=TrainingSettings(threshold=100, schedule="30m"))
    with engine.begin() as conn:
        assert triggers.run_schedule(conn, settings, "30m") == []  # nothing known yet
    fold(engine, settings, payloads.annotation_event(1, 1, "red"))
    with engine.begin() as conn:
        queued = triggers.run_schedule(conn, settings, "30m")
        assert len(queued) == 1
        assert jobs.get(conn, queued[0]).reason == "schedule"  # type: ignore[union-attr]
        assert triggers.run_schedule(conn, settings, "30m") == []  # joins the queued job
        assert triggers.run_schedule(conn, settings, "2h") == []  # not this project's schedule
        job = jobs.claim(conn)
        assert job is not None
        jobs.finish(conn, job.id, "succeeded")
        assert triggers.run_schedule(conn, settings, "30m") == []  # nothing changed since


def test_per_project_schedule_overrides_the_default(engine: Engine) -> None:
    settings = Settings(
        training=TrainingSettings(threshold=100, schedule="30m"),
        projects={1: TrainingSettings(threshold=100, schedule="2h")},
    )
    fold(engine, settings, payloads.annotation_event(1, 1, "red"))
    with engine.begin() as conn:
        assert triggers.run_schedule(conn, settings, "30m") == []
        assert len(triggers.run_schedule(conn, settings, "2h")) == 1


@pytest.fixture
async def scheduled(sqlite_url: str) -> AsyncIterator[Services]:
    settings = Settings(
        database=DatabaseSettings(url=sqlite_url),
        training=TrainingSettings(schedule="0 3 * * *"),
        projects={4: TrainingSettings(schedule="15m")},
    )
    async with open_services(settings) as services:
        yield services


@pytest.mark.anyio
async def test_scheduler_has_one_timer_per_distinct_schedule(scheduled: Services) -> None:
    scheduler = start_scheduler(scheduled)
    try:
        ids = sorted(job.id for job in scheduler.get_jobs())
        assert ids == ["catch-up", "schedule:0 3 * * *", "schedule:15m"]
    finally:
        scheduler.shutdown(wait=False)


def test_cli_names_the_bad_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "settings.toml"
    config.write_text("[training]\nthreshold = -1\n")
    assert main(["migrate", "--config", str(config)]) == 2
    assert "training.threshold" in capsys.readouterr().err


def test_cli_migrate_creates_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/sub/db.sqlite"\n')
    assert main(["migrate", "--config", str(config)]) == 0
    assert (tmp_path / "sub" / "db.sqlite").exists()
