"""A task's cached embedding belongs to the image URI it was fetched from: a task whose image
URL changes (its data edited, a re-import, the data Label Studio sends to /predict) is fetched
and embedded again; an unchanged URI still costs nothing."""

from pathlib import Path

import pytest
import sqlalchemy as sa

from service.context import Services
from service.jobs import triggers
from service.jobs.catchup import learn
from service.jobs.predictor import Predictor
from service.jobs.worker import Worker
from service.vision.images import content_hash
from storage import labels
from storage.migrate import downgrade, upgrade
from storage.tables import tasks
from tests.fake_labelstudio import FakeLabelStudio, annotate, first_six

pytestmark = pytest.mark.anyio

NEW = "/data/upload/1/edited-7.png"


def repaint_task_7_as_task_10(fake: FakeLabelStudio) -> bytes:
    """Task 7 (red) now points at a new file holding task 10's (blue) picture."""
    picture = fake.files[fake.tasks[10]["data"]["image"]]
    fake.files[NEW] = picture
    fake.tasks[7]["data"] = {"image": NEW}
    return picture


def stored(services: Services, task_id: int) -> tuple[str | None, str | None]:
    with services.engine.begin() as conn:
        row = labels.get_task(conn, task_id)
    assert row is not None
    return row.image_hash, row.image_uri


async def test_a_retrain_embeds_the_new_picture_of_a_task_whose_image_url_changed(
    services: Services, fake: FakeLabelStudio
) -> None:
    annotate(services, *first_six(), fake=fake)
    worker = Worker(services)
    await worker.run_until_idle()
    picture = repaint_task_7_as_task_10(fake)
    # Label Studio sends no webhook for an edited task: catch-up's listing finds the new data.
    report = await learn(services, 1)
    assert (report.tasks_saved, report.tasks_new) == (1, 0)

    with services.engine.begin() as conn:
        triggers.request_training(conn, services.settings, 1, "manual")
    assert await worker.run_until_idle() >= 1

    assert stored(services, 7) == (content_hash(picture), NEW)
    # Task 7 now is task 10's picture: the new version predicts the two alike.
    v2 = {p["task"]: p for p in fake.predictions if p["model_version"] == "labelloop"}
    assert v2[7]["result"] == v2[10]["result"] and v2[7]["score"] == v2[10]["score"]


async def test_an_unchanged_image_url_is_not_fetched_again(
    services: Services, fake: FakeLabelStudio
) -> None:
    annotate(services, *first_six())
    worker = Worker(services)
    await worker.run_until_idle()
    downloads = fake.downloads
    with services.engine.begin() as conn:
        triggers.request_training(conn, services.settings, 1, "manual")
    await worker.run_until_idle()
    assert fake.downloads - downloads == 2  # only the two broken images are tried again
    assert stored(services, 8)[1] == fake.tasks[8]["data"]["image"]


async def test_predict_embeds_the_picture_of_the_task_data_it_is_sent(
    services: Services, fake: FakeLabelStudio
) -> None:
    annotate(services, *first_six())
    await Worker(services).run_until_idle()
    picture = repaint_task_7_as_task_10(fake)

    # Label Studio sends the task's current data: the edited URL, not the stored one.
    results = await Predictor(services).predict(1, [fake.tasks[7], fake.tasks[10]])

    assert stored(services, 7) == (content_hash(picture), NEW)
    assert results[0] == results[1]


async def test_a_task_stored_without_its_uri_is_fetched_once_more_at_no_forward_pass(
    services: Services, fake: FakeLabelStudio
) -> None:
    """Rows from before the URI was stored (an upgraded database) have none: the next job
    fetches the image again, finds its embedding cached by content, and keeps the URI."""
    annotate(services, *first_six())
    worker = Worker(services)
    await worker.run_until_idle()
    backbone = next(iter(worker.pipeline.embedder._backbones.values()))
    forward, downloads = backbone.forward_count, fake.downloads
    with services.engine.begin() as conn:
        conn.execute(tasks.update().values(image_uri=None))

    with services.engine.begin() as conn:
        triggers.request_training(conn, services.settings, 1, "manual")
    await worker.run_until_idle()
    assert fake.downloads - downloads == 12
    assert backbone.forward_count == forward
    assert stored(services, 8)[1] == fake.tasks[8]["data"]["image"]


def test_the_migration_keeps_tasks_and_leaves_their_uri_unknown(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO tasks (id, project_id, data, image_hash, deleted) "
                    'VALUES (7, 1, \'{"image": "/a.png"}\', :h, 0)'
                ),
                {"h": "ab" * 32},
            )
        upgrade(url)
        with engine.begin() as conn:
            row = conn.execute(sa.select(tasks).where(tasks.c.id == 7)).one()
        assert (row.image_hash, row.image_uri) == ("ab" * 32, None)
        downgrade(url, "0001")
        assert "image_uri" not in {c["name"] for c in sa.inspect(engine).get_columns("tasks")}
    finally:
        engine.dispose()
