"""GET /projects/{id}/suspects and the status page's review section, on seeded storage."""

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from service.app import create_app
from service.settings import (
    DatabaseSettings,
    LabelStudioSettings,
    ServerSettings,
    Settings,
    TrainingSettings,
)
from service.web import page_suspects
from storage import labels
from storage import suspects as stored
from storage.db import create_engine
from tests import status_seed

TOKEN = "suspects-token-0123"
LS_URL = "http://label-studio.example:8080"


@pytest.fixture
def client(sqlite_url: str) -> Iterator[TestClient]:
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        status_seed.seed(conn)
    engine.dispose()
    settings = Settings(
        server=ServerSettings(api_token=TOKEN),
        database=DatabaseSettings(url=sqlite_url),
        label_studio=LabelStudioSettings(url=LS_URL, api_key="k" * 40),
        training=TrainingSettings(weights="none"),
    )
    transport = httpx.MockTransport(lambda r: httpx.Response(404, json={"detail": "no"}))
    app = create_app(settings, run_worker=False, transport=transport)
    with TestClient(app) as c:
        yield c


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_suspects_most_suspicious_first_behind_the_token(client: TestClient) -> None:
    assert client.get("/projects/3/suspects").status_code == 401
    answer = client.get("/projects/3/suspects", headers=AUTH)
    assert answer.status_code == 200
    found = answer.json()
    assert [s["task"] for s in found] == [9, 30, 12, 45]
    classes = status_seed.CLASSES
    assert found[0] == {
        "task": 9,
        "annotation": 1009,
        "label": classes[9 % 5 // 2],
        "predicted": classes[(9 % 5 // 2 + 1) % 3],
        "score": 0.97,
        "annotator": status_seed.ANNOTATORS[0],
    }
    limited = client.get("/projects/3/suspects?limit=2", headers=AUTH).json()
    assert [s["task"] for s in limited] == [9, 30]
    assert client.get("/projects/3/suspects?limit=x", headers=AUTH).status_code == 400
    assert client.get("/projects/99/suspects", headers=AUTH).status_code == 404
    assert client.get("/projects/4/suspects", headers=AUTH).json() == []  # known, none


def test_a_changed_or_deleted_annotation_leaves_the_queue(engine: Engine) -> None:
    with engine.begin() as conn:
        status_seed.seed(conn)
        labels.set_labels(conn, [(1009, "something else")])  # relabeled: reviewed
        row = labels.annotations_by_id(conn, [1030])[1030]
        labels.save_annotations(conn, [{**row, "deleted": True}])
        assert [s["task"] for s in stored.listing(conn, 3)] == [12, 45]
        rates = {r["annotator"]: r for r in stored.annotator_rates(conn, 3)}
    # Every seeded suspect's task is a multiple of 3: all by the first annotator.
    first = status_seed.ANNOTATORS[0]
    assert rates[first]["suspects"] == 2
    assert rates[first]["rate"] == pytest.approx(2 / rates[first]["annotations"])
    assert sum(r["suspects"] for r in rates.values()) == 2
    assert next(iter(rates)) == first  # the highest share first


def test_the_page_lists_suspects_with_links_into_label_studio(client: TestClient) -> None:
    html = client.get("/", headers=AUTH).text
    assert "Label review: 4 suspects" in html
    assert f'href="{LS_URL}/projects/3/data?task=9"' in html
    section = html[html.index("Label review") : html.index("<h3>Versions")]
    assert section.index("task 9<") < section.index("task 30<") < section.index("task 45<")
    assert "Disagreement by annotator" in section
    for annotator in status_seed.ANNOTATORS:
        assert f"user {annotator}" in section


def test_the_section_escapes_what_it_shows() -> None:
    hostile = "<script>alert('x')</script>"
    html = page_suspects.section(
        {
            "id": 5,
            "label_studio_url": 'http://ls"><script>',
            "suspects": [
                {
                    "task": 1,
                    "annotation": 2,
                    "label": hostile,
                    "predicted": hostile,
                    "score": 0.5,
                    "annotator": None,
                }
            ],
            "annotators": [{"annotator": None, "annotations": 3, "suspects": 1, "rate": 1 / 3}],
        }
    )
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert page_suspects.section({"id": 5}) == ""  # no version yet: no section
    many = [{**s, "task": t} for t, s in enumerate([{"annotation": 1, "label": "a",
            "predicted": "b", "score": 0.5, "annotator": 1}] * 25)]  # fmt: skip
    assert "and 5 more" in page_suspects.section({"id": 5, "suspects": many})
