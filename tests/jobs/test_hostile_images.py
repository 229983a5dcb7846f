"""Hostile images through the whole worker: each loads, or is skipped with its reason.

The fake Label Studio serves, next to ordinary labeled images, every kind of trouble a project
can hold: refusals (401, 403, 404), a 500, a timeout, bytes that are no image, truncated PNG and
JPEG files, decompression bombs, a file over the size cap, and unusual but valid images (CMYK,
grayscale, RGBA, 16-bit, palette, EXIF-rotated). One training job runs over all of them. The
valid ones are trained on (labeled) or get a prediction (unlabeled); every other task is skipped
with its reason recorded (status ``image_failures``), and training goes on with the rest.
An image at an absolute URL of another host is fetched without the Label Studio key.
"""

import io
import random
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from PIL import Image
from sqlalchemy.engine import Engine

import service.jobs.embedding
from service.context import Services, open_services
from service.jobs import triggers
from service.jobs.catchup import learn
from service.jobs.worker import Worker
from service.labelstudio.client import LabelStudio
from service.settings import DatabaseSettings, LabelStudioSettings, Settings, TrainingSettings
from service.web import status
from storage import jobs, labels, models
from tests.fake_dns import FakeDNS
from tests.fake_labelstudio import BLUE, RED, TOKEN, FakeLabelStudio, annotate, color_image

pytestmark = pytest.mark.anyio

LS_URL = "http://ls.test"
OTHER_HOST = "http://images.example.org"
CAP = 30_000  # bytes; MAX_IMAGE_BYTES for these tests
UPDATED = "2026-11-29T10:00:00Z"

Answer = Callable[[httpx.Request], httpx.Response]


# ---------------------------------------------------------------------------------------------
# images made here
# ---------------------------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def cmyk_jpeg() -> bytes:
    return encoded(Image.new("CMYK", (40, 40), (0, 200, 200, 20)), "JPEG")


def grayscale_png() -> bytes:
    image = Image.linear_gradient("L").resize((40, 40))
    return encoded(image, "PNG")


def rgba_png() -> bytes:
    image = Image.new("RGBA", (40, 40), (*BLUE, 128))
    return encoded(image, "PNG")


def sixteen_bit_png() -> bytes:
    image = Image.new("I;16", (40, 40))
    image.putdata([(i * 997) % 65536 for i in range(40 * 40)])
    data = encoded(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I"), "not a 16-bit PNG"
    return data


def palette_png() -> bytes:
    image = Image.new("P", (40, 40), 3)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255, 220, 30, 30] + [0] * 756)
    return encoded(image, "PNG", transparency=0)


def exif_rotated_jpeg() -> bytes:
    image = Image.new("RGB", (60, 30), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return encoded(image, "JPEG", exif=exif)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def noise_png(side: int) -> bytes:
    rng = random.Random(side)
    image = Image.frombytes(
        "RGB", (side, side), bytes(rng.randrange(256) for _ in range(side**2 * 3))
    )
    return encoded(image, "PNG")


def raise_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def status_answer(code: int) -> Answer:
    return lambda request: httpx.Response(code, json={"detail": f"status {code}"})


# ---------------------------------------------------------------------------------------------
# the fake Label Studio, with faults and another host
# ---------------------------------------------------------------------------------------------


@dataclass
class HostileLabelStudio(FakeLabelStudio):
    faults: dict[str, Answer] = field(default_factory=dict)  # image path -> answer
    foreign: dict[str, bytes] = field(default_factory=dict)  # absolute URL -> image
    foreign_requests: list[httpx.Request] = field(default_factory=list)

    def add_fault(self, task_id: int, answer: Answer) -> None:
        self.add_task(task_id, None)
        self.faults[self.tasks[task_id]["data"]["image"]] = answer

    def add_foreign(self, task_id: int, url: str, image: bytes) -> None:
        self.tasks[task_id] = {"id": task_id, "project": self.project_id, "data": {"image": url}}
        self.foreign[url] = image

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != httpx.URL(LS_URL).host:
            self.foreign_requests.append(request)
            image = self.foreign.get(str(request.url))
            if image is None:
                return httpx.Response(404)
            return httpx.Response(200, content=image)
        answer = self.faults.get(request.url.path)
        if answer is not None:
            return answer(request)
        return super().handle(request)


LOADABLE = {  # task id -> image that must decode
    20: cmyk_jpeg,
    21: grayscale_png,
    22: rgba_png,
    23: sixteen_bit_png,
    24: exif_rotated_jpeg,
    25: palette_png,
}
LABELED_HOSTILE = {20: "red", 24: "red", 21: "blue"}  # trained on, not predicted

# task id -> (how it is served, what its recorded reason must contain)
FAILING: dict[int, tuple[Answer | bytes, str]] = {
    30: (status_answer(401), "download failed: http 401"),
    31: (status_answer(403), "download failed: http 403"),
    32: (status_answer(404), "download failed: http 404"),
    33: (status_answer(500), "download failed: unavailable: http 500"),
    34: (raise_timeout, "download failed: unavailable: ReadTimeout"),
    35: (b"%PDF-1.7 this is not an image", "not decodable: not an image"),
    36: (color_image(RED, seed=36)[:300], "not decodable: truncated image"),
    37: (exif_rotated_jpeg()[:200], "not decodable: truncated image"),
    38: (png_claiming(100_000, 100_000), "not decodable: too large"),
    39: (png_claiming(13_000, 13_000), "not decodable: too large"),  # over 150 MP
    40: (b"", "not decodable: not an image"),
    41: (noise_png(120), f"download failed: too large (> {CAP} bytes)"),
}
FOREIGN_TASK = 50
FOREIGN_URL = f"{OTHER_HOST}/pictures/cat.png"


@pytest.fixture
def fake() -> HostileLabelStudio:
    fake = HostileLabelStudio()
    for task_id in range(1, 9):  # 1-6 are labeled by first_six-like annotations, 7-8 are not
        fake.add_task(task_id, color_image(RED if task_id % 2 else BLUE, seed=task_id))
    for task_id, make in LOADABLE.items():
        fake.add_task(task_id, make())
    for task_id, (served, _) in FAILING.items():
        if isinstance(served, bytes):
            fake.add_task(task_id, served)
        else:
            fake.add_fault(task_id, served)
    fake.add_foreign(FOREIGN_TASK, FOREIGN_URL, color_image(BLUE, seed=FOREIGN_TASK))
    return fake


async def no_wait(delay: float) -> None:
    return None


@pytest.fixture
async def services(
    engine: Engine, fake: HostileLabelStudio, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Services]:
    """The worker's resources on the hostile fake; retries do not wait, the size cap is small."""
    monkeypatch.setattr(service.jobs.embedding, "MAX_IMAGE_BYTES", CAP)
    settings = Settings(
        database=DatabaseSettings(url=engine.url.render_as_string(hide_password=False)),
        label_studio=LabelStudioSettings(url=LS_URL, api_key=TOKEN),
        training=TrainingSettings(threshold=9, weights="none", image_size=64, device="cpu"),
    )
    async with open_services(settings, transport=fake.transport()) as services:
        default_client = services.label_studio
        services.label_studio = LabelStudio(
            LS_URL, TOKEN, transport=fake.transport(), sleep=no_wait, resolve=FakeDNS()
        )
        try:
            await learn(services, 1)  # registered: jobs read the tasks from the log
            yield services
        finally:
            await services.label_studio.aclose()
            services.label_studio = default_client


def label_all(services: Services) -> None:
    labeled = [(100 + t, t, "red" if t % 2 else "blue", UPDATED) for t in range(1, 7)]
    labeled += [(100 + t, t, label, UPDATED) for t, label in LABELED_HOSTILE.items()]
    annotate(services, *labeled)


async def test_every_image_loads_or_is_skipped_with_its_reason(
    services: Services, fake: HostileLabelStudio
) -> None:
    for task_id, make in LOADABLE.items():
        assert len(make()) <= CAP, f"test image of task {task_id} is over the cap"
    label_all(services)

    assert await Worker(services).run_until_idle() == 1

    with services.engine.begin() as conn:
        job = jobs.recent(conn, 1)[0]
        active = models.active(conn, 1)
        failures = dict(labels.image_failures(conn, 1, limit=100))
        shown = status.project_status(conn, 1)
    assert job.status == "succeeded", job.error
    assert active is not None
    # Trained on the six ordinary labeled images and the three labeled hostile ones.
    assert active.trained_on == 6 + len(LABELED_HOSTILE)

    predicted = {p["task"] for p in fake.predictions}
    unlabeled_loadable = {7, 8, FOREIGN_TASK} | (set(LOADABLE) - set(LABELED_HOSTILE))
    assert predicted == unlabeled_loadable

    assert set(failures) == set(FAILING), failures
    for task_id, (_, reason) in FAILING.items():
        assert reason in failures[task_id], (task_id, failures[task_id])
    assert shown is not None
    assert {f["task"] for f in shown["image_failures"]} == set(FAILING)
    assert job.progress["images"]["failed"] == len(FAILING)


async def test_image_of_another_host_is_fetched_without_the_key(
    services: Services, fake: HostileLabelStudio
) -> None:
    label_all(services)
    await Worker(services).run_until_idle()

    assert [str(r.url) for r in fake.foreign_requests] == [FOREIGN_URL]
    headers = fake.foreign_requests[0].headers
    assert "authorization" not in headers
    assert all(TOKEN not in value for value in headers.values())
    assert FOREIGN_TASK in {p["task"] for p in fake.predictions}


async def test_a_fixed_image_is_used_by_the_next_job(
    services: Services, fake: HostileLabelStudio
) -> None:
    """A skipped image is not a verdict: once Label Studio serves it, the next run uses it."""
    label_all(services)
    worker = Worker(services)
    await worker.run_until_idle()
    path = fake.tasks[32]["data"]["image"]
    del fake.faults[path]
    fake.files[path] = color_image(RED, seed=32)
    with services.engine.begin() as conn:
        triggers.request_training(conn, services.settings, 1, "manual")

    assert await worker.run_until_idle() == 1

    with services.engine.begin() as conn:
        failures = dict(labels.image_failures(conn, 1, limit=100))
        job = jobs.recent(conn, 1)[0]
        hashes = {t.id: t.image_hash for t in labels.project_tasks(conn, 1)}
    assert job.status == "succeeded", job.error
    assert set(failures) == set(FAILING) - {32}
    assert hashes[32] is not None


def test_hostile_bodies_are_what_they_claim() -> None:
    """Guards the test data itself: a bomb header parses as huge, truncated files are short."""
    bomb = png_claiming(100_000, 100_000)
    width, height = struct.unpack(">II", bomb[16:24])
    assert (width, height) == (100_000, 100_000)
    assert len(bomb) < 200
    assert len(noise_png(120)) > CAP
    truncated = FAILING[36][0]
    assert isinstance(truncated, bytes) and truncated.startswith(b"\x89PNG")
