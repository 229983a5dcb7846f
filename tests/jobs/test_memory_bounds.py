"""Memory bounded by design: fine-tune images on disk for the job's length only, at most two
backbones loaded, and old versions' networks deleted from the database and the disk."""

import asyncio
import dataclasses
import os
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import torch
from starlette.testclient import TestClient

from service.app import create_app
from service.context import Services
from service.jobs import embedding, pipeline, versions
from service.jobs.worker import Worker
from service.vision.backbone import BackboneSpec
from service.vision.finetune import finetune
from service.vision.image_store import ImageRows, ImageStore
from service.vision.images import decode_image, preprocess
from storage import jobs, models
from storage.tables import model_versions
from tests.fake_labelstudio import BLUE, RED, FakeLabelStudio, annotate, color_image, first_six

pytestmark = pytest.mark.anyio
SPEC = BackboneSpec("resnet18", "none", 64)


def finetuning(services: Services, **changes: Any) -> None:
    training = dataclasses.replace(
        services.settings.training, mode="finetune", finetune_epochs=1, **changes
    )
    services.settings = dataclasses.replace(services.settings, training=training)


@pytest.fixture
def stores(monkeypatch: pytest.MonkeyPatch) -> list[ImageStore]:
    """Every image store the pipeline opens."""
    opened: list[ImageStore] = []

    class Recorded(ImageStore):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(pipeline, "ImageStore", Recorded)
    return opened


def weight_files() -> list[Path]:
    folder = versions._folders.get(os.getpid())
    return sorted(folder.glob("*.pt")) if folder is not None else []


async def test_finetune_reads_its_images_from_a_store_deleted_after_the_job(
    services: Services, stores: list[ImageStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    finetuning(services)
    given: list[Any] = []

    def spy(spec: BackboneSpec, images: Any, *args: Any, **kwargs: Any) -> Any:
        given.append(images)
        assert [p.name for p in stores[0].folder.iterdir()] == ["images.u8"]
        return finetune(spec, images, *args, **kwargs)

    monkeypatch.setattr(pipeline, "finetune", spy)
    annotate(services, *first_six())
    assert await Worker(services).run_until_idle() == 1
    with services.engine.begin() as conn:
        assert jobs.recent(conn, 1)[0].status == "succeeded"
    assert len(stores) == 1 and len(stores[0]) == 6  # the six labeled images, once each
    assert isinstance(given[0], ImageRows) and len(given[0]) == 6  # rows, not tensors
    assert not stores[0].folder.exists()


async def test_the_store_is_deleted_when_the_finetune_fails(
    services: Services, stores: list[ImageStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    finetuning(services)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(pipeline, "finetune", broken)
    annotate(services, *first_six())
    assert await Worker(services).run_until_idle() == 1
    with services.engine.begin() as conn:
        job = jobs.recent(conn, 1)[0]
    assert (job.status, job.error) == ("failed", "RuntimeError: out of memory, say")
    assert len(stores) == 1 and not stores[0].folder.exists()


async def test_the_store_is_deleted_when_the_job_is_cancelled(
    services: Services, stores: list[ImageStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    finetuning(services)
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    release = threading.Event()
    outcome: list[BaseException | None] = []

    def blocked(spec: BackboneSpec, images: Any, *args: Any, **kwargs: Any) -> Any:
        loop.call_soon_threadsafe(started.set)
        release.wait(timeout=30)
        try:
            images.take([0])
        except ValueError as exc:  # what a daemon thread left running meets
            outcome.append(exc)
        raise RuntimeError("dropped")

    monkeypatch.setattr(pipeline, "finetune", blocked)
    annotate(services, *first_six())
    run = asyncio.create_task(Worker(services).run_one())
    async with asyncio.timeout(60):
        await started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert len(stores) == 1 and not stores[0].folder.exists()
    release.set()
    for _ in range(600):  # the daemon thread finishes on its own
        if outcome:
            break
        await asyncio.sleep(0.05)
    assert outcome and "closed" in str(outcome[0])


def test_finetune_from_the_store_equals_finetune_from_memory() -> None:
    colours = [RED if i % 2 else BLUE for i in range(10)]
    images = [preprocess(decode_image(color_image(c, seed=i)), 64) for i, c in enumerate(colours)]
    labels = ["red" if i % 2 else "blue" for i in range(10)]
    cpu = torch.device("cpu")
    in_memory = finetune(SPEC, images, labels, list(range(10)), device=cpu, epochs=1)
    with ImageStore(10, 64) as store:
        rows = [store.append(image) for image in reversed(images)]
        from_disk = finetune(
            SPEC, store.rows(rows[::-1]), labels, list(range(10)), device=cpu, epochs=1
        )
    assert in_memory.backbone.keys() == from_disk.backbone.keys()
    for key, value in in_memory.backbone.items():
        assert torch.equal(value, from_disk.backbone[key]), key
    assert in_memory.metrics == from_disk.metrics


class FakeBackbone:
    def __init__(self, spec: BackboneSpec, device: torch.device) -> None:
        self.spec, self.device = spec, device


async def test_at_most_two_backbones_stay_loaded_the_least_recent_goes(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedding, "Backbone", FakeBackbone)
    embedder = embedding.Embedder(services)
    base, active, other = (BackboneSpec("resnet18", "none", size) for size in (64, 96, 128))
    first = embedder.backbone(base, "cpu")
    gone = weakref.ref(embedder.backbone(active, "cpu"))
    assert embedder.backbone(base, "cpu") is first  # used again: the most recent now
    embedder.backbone(other, "cpu")
    assert len(embedder._backbones) == 2
    assert [b.spec for b in embedder._backbones.values()] == [base, other]
    assert gone() is None  # nothing holds the evicted one any more
    for size in range(32, 64):
        embedder.backbone(BackboneSpec("resnet18", "none", size), "cpu")
        assert len(embedder._backbones) <= 2


def add_versions(conn: Any, count: int, *, finetuned: bool = True) -> None:
    for number in range(1, count + 1):
        models.add(
            conn,
            1,
            f"labelloop-v{number}",
            {
                "backbone": f"resnet18|file:{number:016x}|64|p1" if finetuned else "r|none|64",
                "labels": ["blue", "red"],
                "trained_on": 6,
                "head": b"head",
                "backbone_weights": b"net" if finetuned else None,
                "settings": {"mode": "finetune" if finetuned else "head"},
            },
        )


def weights_kept(conn: Any) -> list[str]:
    stmt = sa.select(model_versions.c.version).where(model_versions.c.backbone_weights.is_not(None))
    return sorted(conn.execute(stmt).scalars())


async def test_only_the_active_version_and_the_newest_keep_their_weights(
    services: Services,
) -> None:
    with services.engine.begin() as conn:
        add_versions(conn, 8)
        models.activate(conn, 1, "labelloop-v2")  # a rollback target
        dropped = models.drop_old_weights(conn, 1, keep=5)
        assert dropped == [
            "resnet18|file:0000000000000001|64|p1",
            "resnet18|file:0000000000000003|64|p1",
        ]
        assert weights_kept(conn) == [f"labelloop-v{n}" for n in (2, 4, 5, 6, 7, 8)]
        assert len(models.listing(conn, 1)) == 8  # every row stays: history
        assert models.drop_old_weights(conn, 1, keep=5) == []
        with pytest.raises(models.WeightsDeleted, match="keep_versions"):
            models.activate(conn, 1, "labelloop-v1")
        assert models.active(conn, 1).version == "labelloop-v2"  # type: ignore[union-attr]
        assert models.activate(conn, 1, "labelloop-v4")  # inside the window: allowed


async def test_head_versions_can_always_be_activated(services: Services) -> None:
    with services.engine.begin() as conn:
        add_versions(conn, 3, finetuned=False)
        assert models.drop_old_weights(conn, 1, keep=1) == []
        assert models.activate(conn, 1, "labelloop-v1")


async def test_activating_a_version_whose_weights_were_deleted_is_refused_with_409(
    services: Services, fake: FakeLabelStudio
) -> None:
    with services.engine.begin() as conn:
        add_versions(conn, 3)
        models.activate(conn, 1, "labelloop-v3")
        models.drop_old_weights(conn, 1, keep=1)
    app = create_app(services.settings, run_worker=False, transport=fake.transport())
    with TestClient(app) as client:
        refused = client.post("/projects/1/models/labelloop-v1/activate")
        assert refused.status_code == 409
        assert "labelloop-v1" in refused.json()["error"]
        assert "weights were deleted" in refused.json()["error"]
        assert client.post("/projects/1/models/labelloop-v9/activate").status_code == 404
    with services.engine.begin() as conn:
        assert models.active(conn, 1).version == "labelloop-v3"  # type: ignore[union-attr]
        assert jobs.recent(conn, 1) == []  # no push queued


async def test_old_finetunes_lose_their_weights_and_files_the_active_keeps_both(
    services: Services, fake: FakeLabelStudio
) -> None:
    finetuning(services, keep_versions=1)
    for path in weight_files():
        path.unlink()
    annotate(services, *first_six())
    worker = Worker(services)
    assert await worker.run_until_idle() == 1
    for flip in range(2):  # two more fine-tunes, each on different labels (other weights)
        relabeled = [(107 + flip, 7 + flip, "red" if flip else "blue", "2026-11-29T12:00:00Z")]
        annotate(services, *relabeled)
        with services.engine.begin() as conn:
            jobs.enqueue(conn, 1, "manual", kind="finetune")
        assert await worker.run_until_idle() == 1
    with services.engine.begin() as conn:
        rows = [models.get(conn, 1, f"labelloop-v{n}") for n in (1, 2, 3)]
        active = models.active(conn, 1)
    assert all(row is not None for row in rows) and active is not None
    kept = {row.version for row in rows if row.backbone_weights is not None}  # type: ignore[union-attr]
    assert kept == {active.version, "labelloop-v3"}
    names = {path.name[:16] for path in weight_files()}
    held = {row.backbone.split("|file:")[1][:16] for row in rows if row.version in kept}  # type: ignore[union-attr]
    assert names == held  # the dropped versions' files are gone
    gone = {row.backbone.split("|file:")[1][:16] for row in rows if row.version not in kept}  # type: ignore[union-attr]
    assert gone and not gone & names


async def test_a_finetune_that_stores_nothing_deletes_its_weights_file(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    finetuning(services)
    for path in weight_files():
        path.unlink()

    async def down(project_id: int) -> list[str]:
        raise RuntimeError("Label Studio went away")

    monkeypatch.setattr(services.label_studio, "model_versions", down)
    annotate(services, *first_six())
    assert await Worker(services).run_until_idle() == 1
    with services.engine.begin() as conn:
        assert jobs.recent(conn, 1)[0].status == "failed"
        assert models.active(conn, 1) is None
    assert weight_files() == []


def test_weight_files_live_in_a_folder_of_this_process() -> None:
    path = versions.materialize_weights(b"weights-c")
    assert path.parent == versions._folders[os.getpid()]
    assert versions.discard_weights([f"resnet18|file:{path.name[:16]}|64|p1"]) == 1
    assert not path.exists()
    assert versions.discard_weights(["resnet18|imagenet:X|224|p1"]) == 0


async def test_the_worker_gives_memory_back_after_every_job(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.jobs import memory, worker

    calls: list[int] = []
    monkeypatch.setattr(worker, "release_memory", lambda: calls.append(1))
    annotate(services, *first_six())
    with services.engine.begin() as conn:
        jobs.enqueue(conn, 1, "manual", kind="push")
    assert await Worker(services).run_until_idle() == 2
    assert len(calls) == 2
    memory.release_memory()  # the real one runs here (glibc) or does nothing (elsewhere)


RETAINED = """
import ctypes, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    from service.jobs.memory import tune_malloc
    assert tune_malloc()
def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
MB = 1 << 20
first = libc.malloc(MB); ctypes.memset(first, 1, MB); libc.free(first)  # a freed big buffer
before = anon_mb()
big, small = [], []
for _ in range(64):  # a batch's buffers, each followed by a smaller one that lives on
    big.append(libc.malloc(MB)); ctypes.memset(big[-1], 1, MB)
    small.append(libc.malloc(100_000))
for pointer in big:
    libc.free(pointer)
print(anon_mb() - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
@pytest.mark.parametrize("mode", ["default", "tuned"])
def test_tuned_malloc_gives_freed_buffers_back(mode: str) -> None:
    """glibc raises its mmap threshold when a big buffer is freed, so later ones land in the
    heap and stay there when freed; `serve` and `worker` fix the threshold (tune_malloc)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", RETAINED, mode],
        capture_output=True, text=True, check=True, env=env, timeout=60,
    )  # fmt: skip
    retained = float(out.stdout)
    if mode == "default":
        assert retained > 32, "glibc kept nothing: this test no longer shows the problem"
    else:
        assert retained < 8
