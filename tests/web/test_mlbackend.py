"""Label Studio's ML-backend protocol: /setup, /predict, /train, START_TRAINING on /webhook."""

import base64
import dataclasses
import json

import pytest
from starlette.testclient import TestClient

from service.app import create_app
from service.context import Services
from service.jobs.predictor import Predictor
from service.jobs.worker import Worker
from storage import jobs
from tests import payloads
from tests.fake_labelstudio import FakeLabelStudio, annotate, first_six

pytestmark = pytest.mark.anyio
TOKEN = "control-token"


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"ls:{password}".encode()).decode()}


async def test_predict_setup_and_train(services: Services, fake: FakeLabelStudio) -> None:
    annotate(services, *first_six())
    await Worker(services).run_until_idle()
    settings = dataclasses.replace(
        services.settings,
        server=dataclasses.replace(services.settings.server, api_token=TOKEN),
        webhook=dataclasses.replace(services.settings.webhook, secret="hook-secret"),
    )
    app = create_app(settings, run_worker=False, transport=fake.transport())
    with TestClient(app) as client:
        setup = client.post(
            "/setup", json={"project": "1.1764410000", "schema": payloads.LABEL_CONFIG},
            headers=basic(TOKEN),
        )  # fmt: skip
        assert setup.status_code == 200
        # The name Label Studio's predictions of the active version carry (see mlbackend.py).
        assert setup.json() == {"model_version": "labelloop"}

        tasks = [fake.tasks[8], fake.tasks[7], fake.tasks[11], fake.tasks[13 - 1]]
        answer = client.post(
            "/predict", json={"tasks": tasks, "project": "1.1764410000"}, headers=basic(TOKEN)
        )
        assert answer.status_code == 200
        results = answer.json()["results"]
        assert len(results) == 4  # one per task, in order, even for broken images
        assert [r["model_version"] for r in results] == ["labelloop"] * 4
        assert results[0]["result"][0]["value"]["choices"][0] in ("red", "blue")
        assert 0.0 <= results[1]["score"] <= 1.0
        assert results[2]["result"] == [] and results[3]["result"] == []  # 404 and not-an-image

        assert client.post("/predict", json={"tasks": tasks, "project": "1"}).status_code == 401
        assert client.post("/setup", json={}, headers=basic("wrong")).status_code == 401
        deep = b"[" * 30_000 + b"]" * 30_000  # more nesting than Python's JSON reader takes
        for route in ("/setup", "/predict", "/train"):
            assert client.post(route, content=deep, headers=basic(TOKEN)).status_code == 400

        # "Start training", old style and new style, both queue a manual retrain.
        assert client.post("/train", json={"project": "1.17"}, headers=basic(TOKEN)).json()["job"]
        start = {"action": "START_TRAINING", "project": payloads.project()}
        assert client.post("/webhook", json=start, headers=basic(TOKEN)).status_code == 200
        assert client.post("/webhook", content=json.dumps(start)).status_code == 401


async def test_predict_without_a_model_answers_no_results(
    services: Services, fake: FakeLabelStudio
) -> None:
    app = create_app(services.settings, run_worker=False, transport=fake.transport())
    with TestClient(app) as client:
        answer = client.post("/predict", json={"tasks": [fake.tasks[1]], "project": "1.0"})
    assert answer.json() == {"results": []}
    with services.engine.begin() as conn:
        assert jobs.recent(conn, 1) == []


async def test_predict_scores_by_the_sampling_rule(
    services: Services, fake: FakeLabelStudio
) -> None:
    """/predict's score follows [training] sampling, as the push's does: with two classes the
    margin p1 - p2 is 2 p1 - 1, entropy's is lower than both for an unsure answer."""
    annotate(services, *first_six())
    await Worker(services).run_until_idle()
    predictor = Predictor(services)

    async def score(rule: str) -> float:
        training = dataclasses.replace(services.settings.training, sampling=rule)
        services.settings = dataclasses.replace(services.settings, training=training)
        [answer] = await predictor.predict(1, [fake.tasks[8]])
        return float(answer["score"])

    top = await score("least_confidence")
    assert 0.5 <= top <= 1.0
    assert await score("margin") == pytest.approx(2 * top - 1, abs=1e-5)
    entropy = await score("entropy")
    assert 0.0 <= entropy <= 1.0 and (top == pytest.approx(1.0) or entropy < top)
