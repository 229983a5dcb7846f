"""Catch-up brings the log back to Label Studio's truth after missed webhooks."""

import pytest
import sqlalchemy as sa

from service.context import Services
from service.ingest.fold_loop import fold_all
from service.jobs.catchup import catch_up, catch_up_all
from storage import labels
from storage.tables import events
from tests import payloads
from tests.fake_labelstudio import FakeLabelStudio, annotate

pytestmark = pytest.mark.anyio
EARLY, LATE = "2026-11-29T10:00:00Z", "2026-11-29T11:00:00Z"


def label_state(services: Services) -> dict[int, str]:
    with services.engine.begin() as conn:
        return labels.training_labels(conn, 1)


async def test_missed_creates_updates_and_deletes_are_folded_in(
    services: Services, fake: FakeLabelStudio
) -> None:
    # What labelloop heard before it went down:
    annotate(services, (101, 1, "red", EARLY), (102, 2, "blue", EARLY), (103, 3, "red", EARLY))
    # What Label Studio holds now: 101 relabeled, 102 deleted, 103 unchanged, 104 new.
    fake.annotations = {
        1: [payloads.annotation(101, 1, "blue", updated_at=LATE)],
        3: [payloads.annotation(103, 3, "red", updated_at=EARLY)],
        4: [payloads.annotation(104, 4, "blue", updated_at=LATE)],
        5: [payloads.annotation(105, 5, None, was_cancelled=True, updated_at=LATE)],
    }
    report = await catch_up(services, 1)
    assert (report.changed, report.deleted) == (3, 1)  # 101, 104 and the skipped 105; 102
    fold_all(services)
    assert label_state(services) == {1: "blue", 3: "red", 4: "blue"}
    with services.engine.begin() as conn:
        sources = conn.execute(sa.select(events.c.source, sa.func.count()).group_by("source"))
        assert dict(sources.all()) == {"webhook": 3, "catch-up": 4}

    # Nothing new: a second catch-up appends nothing.
    again = await catch_up(services, 1)
    assert (again.changed, again.deleted) == (0, 0)


async def test_catch_up_crossing_the_threshold_queues_a_training(
    services: Services, fake: FakeLabelStudio
) -> None:
    annotate(services, (101, 1, "red", EARLY))  # the project is known; 1 change < 6
    fake.annotations = {
        t: [payloads.annotation(100 + t, t, "red" if t % 2 else "blue", updated_at=LATE)]
        for t in range(1, 8)
    }
    [report] = await catch_up_all(services)
    assert report.changed == 7
    result = fold_all(services)
    assert len(result.queued_jobs) == 1


async def test_label_studio_down_is_logged_not_fatal(services: Services) -> None:
    annotate(services, (101, 1, "red", EARLY))
    # The fake answers 404 for another project id: the failure is contained.
    with services.engine.begin() as conn:
        labels.save_project(conn, 99, {})
    reports = await catch_up_all(services)
    assert [r.project_id for r in reports] == [1]
