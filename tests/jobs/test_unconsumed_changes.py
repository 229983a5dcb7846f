"""Only a succeeded training consumes the changes it saw; a failed or skipped one leaves them
counted, so the next threshold check or schedule tick retrains without waiting for N more."""

import httpx
import pytest

from service.context import Services
from service.jobs import triggers
from service.jobs.worker import Worker
from service.labelstudio.client import LabelStudio
from service.settings import Settings, TrainingSettings
from storage import jobs
from tests.fake_labelstudio import TOKEN, annotate, first_six

pytestmark = pytest.mark.anyio

# The services fixture's threshold is 6; the same, with a schedule, for the schedule's tick.
SCHEDULED = Settings(training=TrainingSettings(threshold=6, schedule="30m"))


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


async def no_wait(seconds: float) -> None:
    return None


async def fail_one_job_label_studio_down(services: Services) -> None:
    """The threshold's job runs while Label Studio refuses connections, and fails."""
    reachable = services.label_studio
    down = LabelStudio(
        "http://ls.test", TOKEN, transport=httpx.MockTransport(refuse), sleep=no_wait
    )
    services.label_studio = down
    try:
        assert await Worker(services).run_until_idle() == 1
    finally:
        services.label_studio = reachable
        await down.aclose()
    with services.engine.begin() as conn:
        job = jobs.recent(conn, 1)[0]
    assert job.status == "failed" and "LabelStudioUnavailable" in job.error


async def test_after_a_failed_job_the_schedule_retrains_without_new_labels(
    services: Services,
) -> None:
    annotate(services, *first_six())
    await fail_one_job_label_studio_down(services)
    with services.engine.begin() as conn:
        assert jobs.changes_since_last_job(conn, 1) == 6
        queued = triggers.run_schedule(conn, SCHEDULED, "30m")
    assert len(queued) == 1
    # Label Studio is back: the retrain succeeds, and only that consumes the six changes.
    assert await Worker(services).run_until_idle() == 1
    with services.engine.begin() as conn:
        assert jobs.get(conn, queued[0]).status == "succeeded"  # type: ignore[union-attr]
        assert jobs.changes_since_last_job(conn, 1) == 0
        assert triggers.run_schedule(conn, SCHEDULED, "30m") == []


async def test_after_a_failed_job_the_next_fold_retrains_without_n_more_labels(
    services: Services,
) -> None:
    annotate(services, *first_six())
    await fail_one_job_label_studio_down(services)
    # One more label (the threshold is 6): the changes the failed job saw still count.
    annotate(services, (107, 7, "red", "2026-11-29T10:00:00Z"))
    with services.engine.begin() as conn:
        job = jobs.recent(conn, 1)[0]
    assert (job.status, job.reason) == ("queued", "threshold")


async def test_after_a_skipped_job_the_first_label_of_a_second_class_retrains(
    services: Services,
) -> None:
    annotate(services, *[(100 + t, t, "red", "2026-11-29T10:00:00Z") for t in range(1, 7)])
    assert await Worker(services).run_until_idle() == 1
    with services.engine.begin() as conn:
        assert jobs.recent(conn, 1)[0].status == "skipped"  # one class only
    annotate(services, (108, 8, "blue", "2026-11-29T10:00:00Z"))
    assert await Worker(services).run_until_idle() == 1
    with services.engine.begin() as conn:
        newest = jobs.recent(conn, 1)[0]
    assert (newest.status, newest.reason) == ("succeeded", "threshold")
