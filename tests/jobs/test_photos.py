"""The embedding stage on photos: the pipeline gives what decoding each chunk in turn gave, and
[training] max_image_pixels reaches the decode (48 MP photos are taken by default)."""

import io
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import torch
from PIL import Image
from sqlalchemy.engine import Engine

import service.jobs.embedding
from service.context import Services, open_services
from service.jobs.catchup import learn
from service.jobs.embedding import Embedder
from service.jobs.worker import Worker
from service.settings import DatabaseSettings, LabelStudioSettings, Settings, TrainingSettings
from service.vision.backbone import Backbone, BackboneSpec
from service.vision.images import model_input
from storage import embeddings, labels
from tests.fake_labelstudio import (
    BLUE,
    RED,
    TOKEN,
    FakeLabelStudio,
    annotate,
    color_image,
    first_six,
)

pytestmark = pytest.mark.anyio

SPEC = BackboneSpec("resnet18", "none", 64)


def jpeg(width: int, height: int) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def task_rows(services: Services, fake: FakeLabelStudio) -> list[Any]:
    rows = [{"id": t["id"], "data": t["data"]} for t in fake.tasks.values()]
    with services.engine.begin() as conn:
        labels.save_tasks(conn, 1, rows)
        return [labels.get_task(conn, row["id"]) for row in rows]


async def test_the_pipeline_gives_what_decoding_each_chunk_in_turn_gave(
    services: Services, fake: FakeLabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service.jobs.embedding, "CHUNK", 8)  # five chunks, one partial
    for task_id in range(13, 37):
        fake.add_task(task_id, color_image(RED if task_id % 3 else BLUE, seed=task_id))
    fake.add_task(37, fake.files[fake.tasks[14]["data"]["image"]])  # the picture of task 14
    tasks = task_rows(services, fake)  # 1-37, of which 11 (missing) and 12 (text) fail

    report = await Embedder(services).embed_tasks(
        tasks, "image", SPEC, "cpu", lambda done, total: None, max_pixels=10**8
    )

    assert (report.embedded, report.failed, report.cached) == (35, 2, 0)
    assert report.forward_passes == 34  # 37 and 14 share one
    with services.engine.begin() as conn:
        rows = {t.id: labels.get_task(conn, t.id) for t in tasks}
        hashes = [r.image_hash for r in rows.values() if r.image_hash]
        stored = embeddings.get_many(conn, hashes, SPEC.identity())
    assert rows[11].image_error.startswith("download failed") and rows[11].image_hash is None
    assert rows[12].image_error.startswith("not decodable: not an image")
    assert rows[37].image_hash == rows[14].image_hash
    assert len(stored) == 34
    # Decoding chunk by chunk (8 tasks), the first of each picture, one batch per chunk:
    backbone = Backbone(SPEC, torch.device("cpu"))
    for start in range(0, len(tasks), 8):
        chunk = [t for t in tasks[start : start + 8] if t.id not in (11, 12, 37)]
        images = [model_input(fake.files[t.data["image"]], SPEC.image_size) for t in chunk]
        for task, vector in zip(chunk, backbone.embed(images), strict=True):
            assert torch.allclose(report.vectors[task.id], vector, atol=1e-5), task.id
    assert torch.equal(report.vectors[37], report.vectors[14])


async def test_48_mp_photos_are_taken_by_default_and_max_pixels_is_honoured(
    services: Services, fake: FakeLabelStudio
) -> None:
    fake.add_task(13, jpeg(6000, 8000))
    tasks = [t for t in task_rows(services, fake) if t.id in (1, 13)]
    embedder = Embedder(services)

    refused = await embedder.embed_tasks(
        tasks, "image", SPEC, "cpu", lambda done, total: None, max_pixels=40_000_000
    )
    taken = await embedder.embed_tasks(
        tasks,
        "image",
        SPEC,
        "cpu",
        lambda done, total: None,
        max_pixels=TrainingSettings().max_image_pixels,
    )

    assert set(refused.vectors) == {1} and refused.failed == 1
    assert set(taken.vectors) == {1, 13} and taken.failed == 0
    assert taken.vectors[13].shape == (512,)


@pytest.fixture
async def small_limit(engine: Engine, fake: FakeLabelStudio) -> AsyncIterator[Services]:
    settings = Settings(
        database=DatabaseSettings(url=engine.url.render_as_string(hide_password=False)),
        label_studio=LabelStudioSettings(url="http://ls.test", api_key=TOKEN),
        training=TrainingSettings(
            threshold=6, weights="none", image_size=64, device="cpu", max_image_pixels=1_000_000
        ),
    )
    async with open_services(settings, transport=fake.transport()) as services:
        yield services


async def test_the_setting_reaches_the_decode_through_the_worker(
    small_limit: Services, fake: FakeLabelStudio
) -> None:
    fake.add_task(13, jpeg(1250, 1000))
    await learn(small_limit, fake.project_id)  # its TASKS_CREATED webhook, in effect
    annotate(small_limit, *first_six(), fake=fake)

    assert await Worker(small_limit).run_until_idle() == 1

    with small_limit.engine.begin() as conn:
        failures = dict(labels.image_failures(conn, 1, limit=100))
    assert failures[13] == "not decodable: too large: 1250x1000 pixels exceeds max_pixels 1000000"


async def test_a_failure_while_feeding_is_raised_not_waited_for(
    services: Services, fake: FakeLabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("database gone")

    embedder = Embedder(services)
    monkeypatch.setattr(embedder, "_lookup", broken)
    with anyio.fail_after(60), pytest.raises(RuntimeError, match="database gone"):
        await embedder.embed_tasks(
            task_rows(services, fake), "image", SPEC, "cpu", lambda d, t: None, max_pixels=10**8
        )


async def test_the_next_chunk_is_embedded_while_the_last_one_is_stored(
    services: Services, fake: FakeLabelStudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's database write (SQLite commits with fsync) held the forward pass idle: with
    photos in 32 MB chunks of ~6 that was ~14% of the stage (bench/photos.py under py-spy)."""
    monkeypatch.setattr(service.jobs.embedding, "CHUNK", 4)
    for task_id in range(13, 25):
        fake.add_task(task_id, color_image(RED if task_id % 3 else BLUE, seed=task_id))
    fake.files[fake.tasks[17]["data"]["image"]] = fake.files[fake.tasks[14]["data"]["image"]]
    tasks = [t for t in task_rows(services, fake) if t.id > 12]
    forwards = 0
    forwarded_while_storing = threading.Event()
    storing = threading.Event()
    waited: list[bool] = []
    embed, store = Backbone.embed, Embedder._store

    def counting_embed(self: Backbone, images: Any) -> torch.Tensor:
        nonlocal forwards
        forwards += 1
        if storing.is_set():
            forwarded_while_storing.set()
        return embed(self, images)

    def slow_store(self: Embedder, *args: Any) -> None:
        if not waited:  # the first chunk's write waits for the next forward pass
            waited.append(True)
            storing.set()
            forwarded_while_storing.wait(timeout=10)
            storing.clear()
        store(self, *args)

    monkeypatch.setattr(Backbone, "embed", counting_embed)
    monkeypatch.setattr(Embedder, "_store", slow_store)
    report = await Embedder(services).embed_tasks(
        tasks, "image", SPEC, "cpu", lambda done, total: None, max_pixels=10**8
    )

    assert forwarded_while_storing.is_set(), "no forward pass ran while a chunk was stored"
    assert (report.embedded, report.failed) == (12, 0) and forwards == 3
    # Task 17 shows task 14's picture: looked up before chunk 1 was stored, forwarded once.
    assert report.forward_passes == 11
    assert torch.equal(report.vectors[17], report.vectors[14])
    with services.engine.begin() as conn:
        assert all(labels.get_task(conn, t.id).image_hash for t in tasks)
