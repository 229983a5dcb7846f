"""Catch-up brings the log back to Label Studio's truth after missed webhooks."""

import itertools
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from service.__main__ import register_project
from service.app import create_app
from service.context import Services
from service.ingest.fold_loop import fold_all
from service.jobs.catchup import catch_up, catch_up_all, catch_up_new
from service.settings import (
    DatabaseSettings,
    LabelStudioSettings,
    ServerSettings,
    Settings,
    TrainingSettings,
)
from storage import labels
from storage.db import create_engine, reading, utcnow
from storage.migrate import upgrade
from storage.tables import events
from tests import payloads
from tests.fake_labelstudio import TOKEN, FakeLabelStudio, annotate

pytestmark = pytest.mark.anyio
EARLY, LATE = "2026-11-29T10:00:00Z", "2026-11-29T11:00:00Z"
API_TOKEN = "api-token-catch-up"
NOW = utcnow()


@pytest.fixture
def services(unregistered: Services) -> Services:
    """Catch-up's tests start where labelloop has not listed the project yet."""
    return unregistered


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
        # 3 annotation updates, 1 deletion, and 1 TASKS_CREATED of tasks 4-12, which no
        # webhook named.
        assert dict(sources.all()) == {"webhook": 3, "catch-up": 5}
        assert [t.id for t in labels.project_tasks(conn, 1)] == list(range(1, 13))

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


# -- a listing races with annotators -------------------------------------------------------------


def many_tasks(fake: FakeLabelStudio, last: int = 250) -> None:
    """Tasks up to ``last``: catch-up lists them in three pages of 100."""
    for task_id in range(len(fake.tasks) + 1, last + 1):
        fake.add_task(task_id, None)


def states(services: Services) -> dict[int, tuple[str, bool]]:
    with services.engine.begin() as conn:
        return labels.annotation_states(conn, 1)


async def test_an_annotation_made_while_the_listing_runs_is_not_deleted(
    services: Services, fake: FakeLabelStudio
) -> None:
    many_tasks(fake)
    known = [(101, 1, "red", EARLY), (102, 2, "blue", EARLY)]
    annotate(services, *known)
    fake.annotations = {t: [payloads.annotation(a, t, c, updated_at=u)] for a, t, c, u in known}

    def annotator(listing: int) -> None:
        if listing == 1:  # page 1 (tasks 1-100) has been read: task 2 is labeled again
            fake.annotations[2].append(payloads.annotation(900, 2, "red", updated_at=LATE))
            annotate(services, (900, 2, "red", LATE))  # its webhook is folded at once

    fake.on_list = annotator
    report = await catch_up(services, 1)
    fold_all(services)
    assert report.deleted == 0
    assert states(services)[900] == (LATE, False)  # alive, as in Label Studio
    assert label_state(services) == {1: "red", 2: "red"}


async def test_a_task_deleted_while_the_listing_runs_hides_no_other_task(
    services: Services, fake: FakeLabelStudio
) -> None:
    many_tasks(fake)
    known = [(105, 5, "red", EARLY), (201, 101, "red", EARLY), (202, 102, "blue", EARLY)]
    annotate(services, *known)
    fake.annotations = {t: [payloads.annotation(a, t, c, updated_at=u)] for a, t, c, u in known}

    def annotator(listing: int) -> None:
        if listing == 1:  # page 1 has been read: task 5 goes, and every later task moves up
            del fake.tasks[5], fake.annotations[5]

    fake.on_list = annotator
    await catch_up(services, 1)
    fold_all(services)
    alive = {i for i, (_, deleted) in states(services).items() if not deleted}
    # Task 101's annotation was listed, not skipped (and deleted); task 5's was listed before
    # the task went: the next catch-up sees it gone.
    assert alive == {105, 201, 202}
    fake.on_list = None
    assert (await catch_up(services, 1)).deleted == 1
    fold_all(services)
    assert {i for i, (_, deleted) in states(services).items() if not deleted} == {201, 202}


async def test_an_annotation_deleted_while_the_listing_runs_is_deleted(
    services: Services, fake: FakeLabelStudio
) -> None:
    """Absence still means deletion when nothing since the listing began names the annotation
    (here its webhook was lost)."""
    many_tasks(fake)
    known = [(101, 1, "red", EARLY), (250, 150, "blue", EARLY)]
    annotate(services, *known)
    fake.annotations = {t: [payloads.annotation(a, t, c, updated_at=u)] for a, t, c, u in known}

    def annotator(listing: int) -> None:
        if listing == 1:
            del fake.annotations[150]

    fake.on_list = annotator
    report = await catch_up(services, 1)
    fold_all(services)
    assert report.deleted == 1
    assert states(services)[250] == (EARLY, True)


# -- bounded transactions ----------------------------------------------------------------------


async def test_a_large_catch_up_appends_in_bounded_transactions(
    services: Services, fake: FakeLabelStudio
) -> None:
    """1,300 missed annotations and 250 missed deletions: each write transaction of the
    catch-up stores at most 500 events, so webhooks commit in between (SQLite has one
    writer), and no ANNOTATIONS_DELETED names more than 100 annotations."""
    many_tasks(fake)
    gone = [(5000 + i, 1 + i % 250, "red", EARLY) for i in range(250)]
    annotate(services, *gone)  # labelloop holds these; Label Studio no longer does
    fake.annotations = {
        t: [payloads.annotation(t * 10 + k, t, "blue", updated_at=LATE) for k in range(5)]
        + ([payloads.annotation(t * 10 + 5, t, "red", updated_at=LATE)] if t <= 50 else [])
        for t in range(1, 251)
    }
    committed: list[int] = []  # events stored, seen from outside after each commit
    inside = False

    def count_events() -> int:
        with reading(services.engine) as conn:  # takes no write lock: the writer commits
            return int(conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one())

    def on_commit(conn: object) -> None:
        nonlocal inside
        if not inside:  # the count's own commit
            inside = True
            try:
                committed.append(count_events())
            finally:
                inside = False

    before = count_events()
    sa.event.listen(services.engine, "commit", on_commit)
    try:
        report = await catch_up(services, 1)
    finally:
        sa.event.remove(services.engine, "commit", on_commit)
    assert (report.changed, report.deleted) == (1300, 250)
    seen = [before, *committed, count_events()]
    per_transaction = [b - a for a, b in itertools.pairwise(seen) if b != a]
    assert max(per_transaction) <= 500, per_transaction
    assert sum(per_transaction) == 1300 + 3  # and 250 deletions in events of at most 100
    with services.engine.begin() as conn:
        deletions = conn.execute(
            sa.select(events.c.body).where(events.c.action == "ANNOTATIONS_DELETED")
        ).scalars()
        assert max(len(json.loads(body)["annotations"]) for body in deletions) <= 100
    fold_all(services)
    assert len(label_state(services)) == 250


# -- a project annotated before labelloop heard of it --------------------------------------------


def labeled_in_label_studio(fake: FakeLabelStudio) -> None:
    """Label Studio holds 10 labels (odd tasks red), made before labelloop was registered."""
    fake.annotations = {
        t: [payloads.annotation(100 + t, t, "red" if t % 2 else "blue", updated_at=EARLY)]
        for t in range(1, 11)
    }


@pytest.fixture
def app_client(engine: Engine, fake: FakeLabelStudio) -> Iterator[TestClient]:
    """The real app on the test database (empty: no project known), Label Studio faked."""
    settings = Settings(
        server=ServerSettings(api_token=API_TOKEN),
        database=DatabaseSettings(url=engine.url.render_as_string(hide_password=False)),
        label_studio=LabelStudioSettings(url="http://ls.test", api_key=TOKEN),
        training=TrainingSettings(threshold=100, weights="none"),
    )
    app = create_app(settings, run_worker=False, transport=fake.transport())
    with TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"}) as client:
        yield client


def test_manual_train_of_a_project_annotated_before_labelloop_learns_it_first(
    app_client: TestClient, fake: FakeLabelStudio
) -> None:
    labeled_in_label_studio(fake)
    answer = app_client.post("/projects/1/train")
    assert answer.status_code == 202
    status = app_client.get("/projects/1").json()
    # The job's snapshot will read these 10 labels: they are folded before it was queued.
    assert (status["annotations"], status["labeled_tasks"]) == (10, 10)
    assert [j["id"] for j in status["jobs"]] == [answer.json()["job_id"]]


@pytest.mark.parametrize("route", ["/setup", "/train"])
def test_the_ml_backend_learns_a_project_annotated_before_labelloop_first(
    app_client: TestClient, engine: Engine, fake: FakeLabelStudio, route: str
) -> None:
    labeled_in_label_studio(fake)
    answer = app_client.post(route, json={"project": "1.1700000000"})
    assert answer.status_code in (200, 201), answer.text
    with engine.begin() as conn:  # read here, not through GET /projects/1 (which learns too)
        assert len(labels.training_labels(conn, 1)) == 10


def test_status_of_a_project_annotated_before_labelloop_answers_with_its_labels(
    app_client: TestClient, fake: FakeLabelStudio
) -> None:
    labeled_in_label_studio(fake)
    answer = app_client.get("/projects/1")
    assert answer.status_code == 200, answer.text
    assert answer.json()["annotations"] == 10
    assert app_client.get("/projects/2").status_code == 404  # not in Label Studio either


def test_status_of_an_empty_project_answers_200(app_client: TestClient) -> None:
    answer = app_client.get("/projects/1")  # in Label Studio, no annotation yet
    assert answer.status_code == 200, answer.text
    assert answer.json()["annotations"] == 0


async def test_a_project_first_seen_through_a_webhook_is_caught_up(
    services: Services, fake: FakeLabelStudio
) -> None:
    labeled_in_label_studio(fake)
    fake.annotations[11] = [payloads.annotation(111, 11, "red", updated_at=LATE)]
    annotate(services, (111, 11, "red", LATE))  # the first webhook after a manual setup
    [report] = await catch_up_new(services)  # what the scheduler runs every few seconds
    assert report.changed == 10
    fold_all(services)
    assert len(label_state(services)) == 11
    assert await catch_up_new(services) == []  # caught up once: left to the schedule


async def test_register_creates_the_webhook_then_learns_the_project(
    services: Services, fake: FakeLabelStudio, capsys: pytest.CaptureFixture[str]
) -> None:
    labeled_in_label_studio(fake)
    hooks: list[dict[str, Any]] = []

    def label_studio(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/webhooks/" and request.method == "GET":
            return httpx.Response(200, json=hooks)
        if request.url.path == "/api/webhooks/" and request.method == "POST":
            assert not label_state(services)  # the webhook comes first, then the listing
            hooks.append({**json.loads(request.content), "id": 1})
            return httpx.Response(201, json=hooks[-1])
        return fake.handle(request)

    rc = await register_project(services.settings, 1, transport=httpx.MockTransport(label_studio))
    assert rc == 0 and len(hooks) == 1
    assert "project 1 caught up: 10 annotations learned" in capsys.readouterr().out
    assert len(label_state(services)) == 10  # folded: status and training see them now
    with services.engine.begin() as conn:
        project = labels.get_project(conn, 1)
    assert project is not None and project.caught_up_at is not None


def test_projects_of_an_earlier_version_count_as_caught_up(database_url: str) -> None:
    """Earlier versions caught every known project up at start: after the upgrade a status
    request need not wait on a listing."""
    upgrade(database_url, "0001")
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            insert = sa.text("INSERT INTO projects (id, updated_at) VALUES (3, :t)")
            conn.execute(insert, {"t": NOW})
        upgrade(database_url)
        with engine.begin() as conn:
            project = labels.get_project(conn, 3)
            assert project is not None and project.caught_up_at is not None
            assert labels.never_caught_up(conn) == []
    finally:
        engine.dispose()
