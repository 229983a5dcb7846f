"""Schedules and manual requests turn into job rows; the CLI speaks for a person."""

import argparse
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from service.__main__ import main
from service.context import Services, open_services
from service.ingest.fold import fold_pending
from service.jobs import triggers
from service.jobs.schedules import start_scheduler
from service.settings import DatabaseSettings, ServerSettings, Settings, TrainingSettings
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
        jobs.finish(conn, job.id, "succeeded", lease=job.attempts)
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
        assert ids == ["catch-up", "catch-up-new", "schedule:0 3 * * *", "schedule:15m"]
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


def test_cli_status_says_when_no_server_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No traceback: a clear line, exit 1 (and no illegal 'Bearer ' header when the token is
    empty, which httpx refused before the request was even sent)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free, and nothing listens on it once closed
    config = tmp_path / "settings.toml"
    config.write_text(f"[server]\nport = {port}\n")
    assert main(["status", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach http://127.0.0.1:{port}" in err
    assert "Traceback" not in err and "Bearer" not in err


def test_cli_sends_no_authorization_header_without_a_token() -> None:
    """h11 refuses the header value 'Bearer ' when it sends the request (a traceback before)."""
    from service.__main__ import _api

    args = argparse.Namespace(url=None)
    with _api(Settings(), args) as open_api:
        assert "authorization" not in open_api.headers
    with _api(Settings(server=ServerSettings(api_token="t")), args) as api:
        assert api.headers["authorization"] == "Bearer t"
