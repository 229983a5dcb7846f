"""Who annotated: Label Studio's ``completed_by``, kept beside each folded annotation."""

import json
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from service.ingest.fold import fold_pending
from service.ingest.payloads import annotator_of
from service.settings import Settings
from storage import events, labels
from tests import payloads


@pytest.mark.parametrize(
    ("completed_by", "expected"),
    [
        (12, 12),
        ("12", 12),
        ({"id": 3, "email": "a@example.com"}, 3),
        (None, None),
        ("someone", None),
        (-1, None),
        (True, None),
        ({"email": "a@example.com"}, None),
    ],
)
def test_the_annotator_is_a_user_id_or_unknown(completed_by: Any, expected: int | None) -> None:
    assert annotator_of(completed_by) == expected


def test_the_fold_stores_the_annotator_and_a_newer_version_updates_it(engine: Engine) -> None:
    first = payloads.annotation_event(10, 100, "red")
    first["annotation"]["completed_by"] = {"id": 4, "email": "ann@example.com"}
    unknown = payloads.annotation_event(11, 101, "blue")
    del unknown["annotation"]["completed_by"]
    changed = payloads.annotation_event(
        10, 100, "blue", action="ANNOTATION_UPDATED", updated_at="2026-11-29T11:00:00.000000Z"
    )
    changed["annotation"]["completed_by"] = 5
    deleted = payloads.deleted_event(12)  # never seen: a tombstone

    def fold(*bodies: dict[str, Any]) -> dict[int, Any]:
        with engine.begin() as conn:
            for body in bodies:
                events.append(conn, action=body["action"], project_id=1, body=json.dumps(body))
        with engine.begin() as conn:
            fold_pending(conn, Settings())
            rows = labels.annotations_by_id(conn, [10, 11, 12])
        return {i: row["annotator"] for i, row in rows.items()}

    assert fold(first, unknown, deleted) == {10: 4, 11: None, 12: None}
    assert fold(changed) == {10: 5, 11: None, 12: None}
