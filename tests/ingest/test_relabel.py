"""Labels follow the label config: re-derived from each annotation's stored result when it changes.

Labels used to be read once, against the config current at fold time: annotations folded while
the config was unsupported stayed label-less after it was fixed, and a choice removed from the
config stayed a trained class. Every route a config arrives by re-derives: a webhook's project
object (PROJECT_UPDATED, or inside any other event, catch-up's included), the pipeline's project
sync and the ML backend's /setup.
"""

import json
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.context import Services
from service.ingest import relabel
from service.jobs.pipeline import _read
from service.labelstudio.labelconfig import project_row
from service.web.mlbackend import _setup_project
from storage import events, labels
from storage.db import create_engine
from storage.migrate import upgrade
from storage.tables import annotations as annotations_table
from tests import payloads
from tests.ingest.test_fold import post, state

pytestmark = pytest.mark.anyio


def config(*choices: str, choice: str = "single") -> str:
    options = "".join(f'<Choice value="{c}"/>' for c in choices)
    return (
        '<View><Image name="image" value="$image"/>'
        f'<Choices name="label" toName="image" choice="{choice}">{options}</Choices></View>'
    )


# perRegion Choices label regions, not the image (multiple choice is supported since issue 16)
UNSUPPORTED = config("red", "blue").replace('toName="image"', 'toName="image" perRegion="true"')
RED_BLUE = config("red", "blue")
RED_GREEN = config("red", "green")


def annotated(annotation_id: int, task_id: int, label: str, label_config: str) -> dict[str, Any]:
    body = payloads.annotation_event(annotation_id, task_id, label)
    body["project"] = payloads.project(label_config=label_config)
    return body


def project_updated(label_config: str) -> dict[str, Any]:
    return {"action": "PROJECT_UPDATED", "project": payloads.project(label_config=label_config)}


def test_fixing_an_unsupported_config_gives_the_folded_annotations_their_labels(
    engine: Engine,
) -> None:
    post(
        engine,
        annotated(10, 100, "red", UNSUPPORTED),
        annotated(11, 101, "blue", UNSUPPORTED),
        annotated(12, 102, "red", UNSUPPORTED),
    )
    assert state(engine) == (3, {}, 0)  # stored, but no labels: the config is unsupported

    queued = post(engine, project_updated(RED_BLUE), threshold=3)

    assert state(engine) == (3, {100: "red", 101: "blue", 102: "red"}, 3)
    assert queued  # three new training labels: the threshold fires


def test_a_removed_choice_is_no_longer_a_training_label(engine: Engine) -> None:
    post(engine, annotated(10, 100, "red", RED_BLUE), annotated(11, 101, "blue", RED_BLUE))
    assert state(engine) == (2, {100: "red", 101: "blue"}, 2)

    post(engine, project_updated(RED_GREEN))
    assert state(engine) == (2, {100: "red"}, 3)  # "blue" left the training data: one change

    # The config inside an annotation event counts too; "blue" comes back as it was.
    post(engine, annotated(12, 102, "red", RED_BLUE))
    assert state(engine) == (3, {100: "red", 101: "blue", 102: "red"}, 5)

    post(engine, project_updated(RED_BLUE))  # the same config again: nothing to re-derive
    assert state(engine) == (3, {100: "red", 101: "blue", 102: "red"}, 5)


def test_a_config_changed_and_changed_back_within_one_batch(engine: Engine) -> None:
    """The batch ends on the config it began with, but one annotation was read in between."""
    post(engine, annotated(10, 100, "red", RED_BLUE))
    post(
        engine,
        project_updated(UNSUPPORTED),
        annotated(11, 101, "blue", UNSUPPORTED),
        project_updated(RED_BLUE),
    )
    assert state(engine) == (2, {100: "red", 101: "blue"}, 4)  # red went and came back; blue


def test_a_label_outside_the_config_is_never_a_training_label(engine: Engine) -> None:
    post(engine, annotated(10, 100, "purple", RED_BLUE), annotated(11, 101, "red", RED_BLUE))
    assert state(engine) == (2, {101: "red"}, 1)


def test_a_title_change_re_derives_nothing(engine: Engine) -> None:
    post(engine, annotated(10, 100, "red", RED_BLUE))
    renamed = project_updated(RED_BLUE)
    renamed["project"]["title"] = "renamed"
    post(engine, renamed)
    assert state(engine) == (1, {100: "red"}, 1)


def _folded_unsupported(engine: Engine) -> None:
    post(engine, annotated(10, 100, "red", UNSUPPORTED), annotated(11, 101, "blue", UNSUPPORTED))
    assert state(engine) == (2, {}, 0)


def test_the_pipeline_project_sync_re_derives(engine: Engine) -> None:
    _folded_unsupported(engine)
    with engine.begin() as conn:  # what a job's snapshot does: save the config it read...
        relabel.save_project(conn, 1, project_row(payloads.project(label_config=RED_GREEN)))
    snapshot = _read(engine, 1)  # ...then read the tasks and labels
    assert snapshot.labeled == {100: "red"}  # the job trains on the config it just read
    assert state(engine) == (2, {100: "red"}, 1)


async def test_the_ml_backend_setup_re_derives(services: Services) -> None:
    engine = services.engine
    _folded_unsupported(engine)
    _setup_project(services, 1, RED_BLUE)
    assert state(engine) == (2, {100: "red", 101: "blue"}, 2)

    _setup_project(services, 1, RED_GREEN)  # Label Studio's /setup sends the config as schema
    assert state(engine) == (2, {100: "red"}, 3)
    with engine.begin() as conn:
        project = labels.get_project(conn, 1)
        assert project is not None and project.choices == ["red", "green"]


def test_the_migration_fills_results_in_from_the_log(database_url: str) -> None:
    """A database folded before results were stored: the upgrade reads them from the log, so
    the next config change re-derives those labels too."""
    upgrade(database_url, "0001")
    engine = create_engine(database_url)
    try:
        old = payloads.annotation_event(10, 100, "red", updated_at="2026-11-29T10:00:00Z")
        new = payloads.annotation_event(
            10, 100, "blue", action="ANNOTATION_UPDATED", updated_at="2026-11-29T11:00:00Z"
        )
        new["project"] = payloads.project(label_config=UNSUPPORTED)
        with engine.begin() as conn:
            logged = [json.dumps(old), json.dumps(new), "{not json"]
            appended = [
                events.append(conn, action="ANNOTATION_CREATED", project_id=1, body=raw)
                for raw in logged
            ]
            events.mark_folded(conn, [a.id for a in appended])  # the 0001 fold did
            row = project_row(new["project"])
            del row["targets"]  # a column of 0007
            labels.save_project(conn, 1, row)
            conn.execute(  # as the fold of 0001 left it: the newest version, no label
                sa.insert(annotations_table).values(
                    id=10, task_id=100, project_id=1, updated_at="2026-11-29T11:00:00Z"
                )
            )
        engine.dispose()
        upgrade(database_url)
        assert state(engine) == (1, {}, 0)
        post(engine, project_updated(RED_BLUE))
        assert state(engine) == (1, {100: "blue"}, 1)  # the newer version's result
    finally:
        engine.dispose()
