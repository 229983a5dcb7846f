"""No secret reaches the log: a training run over presigned image URLs, with httpx's own
per-request lines switched on, leaves no signature, credential or token in the output."""

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy.engine import Engine

from service.context import Services, open_services
from service.jobs.catchup import learn
from service.jobs.worker import Worker
from service.logs import configure_logging
from service.redact import MASK, Redactor
from service.settings import (
    DatabaseSettings,
    LabelStudioSettings,
    ServerSettings,
    Settings,
    TrainingSettings,
    WebhookSettings,
)
from tests.fake_dns import FakeDNS
from tests.fake_labelstudio import BLUE, RED, TOKEN, FakeLabelStudio, annotate, color_image

pytestmark = pytest.mark.anyio

S3_SIGNATURE = "5f1d0c3e9a7b44c2a1d8e6f0b3c2a9d7e5f4c3b2a1908f7e6d5c4b3a2f1e0d9c"
S3_CREDENTIAL = "AKIAIOSFODNN7EXAMPLE%2F20261202%2Feu-west-1%2Fs3%2Faws4_request"
S3_SESSION = "IQoJb3JpZ2luX2VjEEXAMPLESESSIONTOKEN"
GCS_SIGNATURE = "7a0c9f3b1e5d2c8a6b4f0e9d7c5a3b1f"
AZURE_SIGNATURE = "q2Xw9vN%2BexampleAzureSasSig%3D"
API_TOKEN = "control-token-of-this-test"
WEBHOOK_SECRET = "webhook-secret-of-this-test"
SECRETS = [S3_SIGNATURE, S3_CREDENTIAL, S3_SESSION, GCS_SIGNATURE, AZURE_SIGNATURE]


def presigned(task_id: int) -> str:
    if task_id % 3 == 0:
        return (
            f"https://storage.googleapis.com/bucket/{task_id}.png?X-Goog-Algorithm=GOOG4-RSA-SHA256"
            f"&X-Goog-Credential=sa%40p.iam.gserviceaccount.com&X-Goog-Signature={GCS_SIGNATURE}"
        )
    if task_id % 3 == 1:
        return (
            f"https://acct.blob.core.windows.net/c/{task_id}.png?sv=2022-11-02&se=2026-12-03"
            f"&sr=b&sp=r&sig={AZURE_SIGNATURE}"
        )
    return (
        f"https://bucket.s3.eu-west-1.amazonaws.com/{task_id}.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={S3_CREDENTIAL}&X-Amz-Security-Token={S3_SESSION}"
        f"&X-Amz-Signature={S3_SIGNATURE}"
    )


@dataclass
class CloudLabelStudio(FakeLabelStudio):
    """Tasks whose images are presigned cloud URLs; task 9's has expired (403)."""

    cloud: dict[str, bytes] = field(default_factory=dict)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != "ls.test":
            image = self.cloud.get(str(request.url))
            return httpx.Response(200, content=image) if image else httpx.Response(403)
        return super().handle(request)


@pytest.fixture
def fake() -> CloudLabelStudio:
    fake = CloudLabelStudio()
    for task_id in range(1, 10):
        url = presigned(task_id)
        fake.tasks[task_id] = {"id": task_id, "project": 1, "data": {"image": url}}
        if task_id != 9:
            fake.cloud[url] = color_image(RED if task_id % 2 else BLUE, seed=task_id)
    return fake


@pytest.fixture
async def services(engine: Engine, fake: CloudLabelStudio) -> AsyncIterator[Services]:
    settings = Settings(
        server=ServerSettings(api_token=API_TOKEN),
        database=DatabaseSettings(url=engine.url.render_as_string(hide_password=False)),
        label_studio=LabelStudioSettings(url="http://ls.test", api_key=TOKEN),
        webhook=WebhookSettings(secret=WEBHOOK_SECRET),
        training=TrainingSettings(threshold=6, weights="none", image_size=64, device="cpu"),
    )
    async with open_services(settings, transport=fake.transport(), resolve=FakeDNS()) as services:
        yield services


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers (pytest's capture among them): put back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    chatty = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in chatty.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.usefixtures("root_logging")
async def test_no_secret_in_the_log_of_a_run_over_presigned_urls(
    services: Services, fake: CloudLabelStudio, log_format: str
) -> None:
    stream = io.StringIO()
    configure_logging(log_format, secrets=services.settings.secrets(), stream=stream)
    logging.getLogger("httpx").setLevel(logging.INFO)  # its request lines carry full URLs
    logger = logging.getLogger("test")
    logger.info("configured with %s and %s", API_TOKEN, WEBHOOK_SECRET)
    logger.info("header: Authorization: Token %s", TOKEN)
    await learn(services, 1)  # registered: jobs read the project's tasks from the log
    annotate(services, *[(100 + t, t, "red" if t % 2 else "blue", "2026-12-02T01:00:00Z")
                         for t in range(1, 7)], fake=fake)  # fmt: skip

    assert await Worker(services).run_until_idle() == 1

    text = stream.getvalue()
    if log_format == "json":
        lines = [json.loads(line) for line in text.splitlines()]
        assert all(line["message"] for line in lines)
    assert "HTTP Request: GET https://bucket.s3.eu-west-1.amazonaws.com/" in text
    assert f"X-Amz-Signature={MASK}" in text and f"sig={MASK}" in text  # redacted, not dropped
    assert "task 9 skipped" in text
    for secret in [*SECRETS, API_TOKEN, WEBHOOK_SECRET, TOKEN]:
        assert secret not in text, secret


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ("GET /api/tasks/?project=3&page=2&page_size=100", "project=3&page=2&page_size=100"),
        ("https://h/x.png?X-Amz-Date=20261202&X-Amz-Signature=abc", "X-Amz-Date=20261202"),
        ("a personal access token refreshed", "a personal access token refreshed"),
        ("/tasks/7/resolve/?fileuri=czM6Ly9iL2sucG5n", "fileuri=czM6Ly9iL2sucG5n"),
    ],
)
def test_redaction_keeps_what_is_not_secret(line: str, kept: str) -> None:
    assert kept in Redactor()(line)


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("https://h/x.png?X-Amz-Signature=abc123", "abc123"),
        ("https://h/x.png?token=t0k3n&a=1", "t0k3n"),
        ("https://h/x.png?access_token=t0k3n", "t0k3n"),
        ("https://h/x.png?Signature=zzz&Key-Pair-Id=APKAEXAMPLE", "APKAEXAMPLE"),
        ("Authorization: Bearer 0123456789abcdef0123", "0123456789abcdef0123"),
        ("refresh eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJl failed", "eyJleHAiOjF9"),
        ("configured secret hunter2hunter2 appears", "hunter2hunter2"),
    ],
)
def test_redaction_removes_secrets(line: str, secret: str) -> None:
    assert secret not in Redactor(["hunter2hunter2"])(line)
