"""Encoded labels of several Choices / multiple choice, read from Label Studio results."""

from typing import Any

import pytest

from service.ingest.payloads import project_label
from service.labelstudio.targets import Target, decode, encode, read_targets, result_items

TARGETS = (Target("digit", ("one", "two")), Target("tags", ("even", "loop"), multiple=True))


def item(from_name: str, *chosen: str) -> dict[str, Any]:
    return {"type": "choices", "from_name": from_name, "to_name": "i",
            "value": {"choices": list(chosen)}}  # fmt: skip


def test_the_encoding_is_canonical() -> None:
    a = read_targets([item("tags", "loop", "even"), item("digit", "two")], TARGETS)
    b = read_targets([item("digit", "two"), item("tags", "even"), item("tags", "loop")], TARGETS)
    assert a == b == '{"digit":["two"],"tags":["even","loop"]}'
    assert decode(a) == {"digit": ["two"], "tags": ["even", "loop"]}


@pytest.mark.parametrize(
    ("result", "label"),
    [
        ([], '{"tags":[]}'),  # nothing ticked: no tag applies; the digit is not answered
        ([item("digit", "three")], '{"tags":[]}'),  # a choice the config does not offer
        ([item("tags", "loop", "gone")], '{"tags":["loop"]}'),
        ("not a list", None),
    ],
)
def test_unanswered_and_unknown_choices(result: Any, label: str | None) -> None:
    assert read_targets(result, TARGETS) == label


def test_single_choice_targets_alone_need_an_answer() -> None:
    assert read_targets([item("other", "x")], TARGETS[:1]) is None


def test_a_project_row_with_targets_reads_encoded_labels_and_without_reads_plain() -> None:
    row = {"targets": [t.to_json() for t in TARGETS], "from_name": None, "choices": None}
    assert project_label([item("digit", "one")], row) == '{"digit":["one"],"tags":[]}'
    classic = {"targets": None, "from_name": "digit", "choices": ["one", "two"]}
    assert project_label([item("digit", "one")], classic) == "one"


def test_result_items_one_per_tag_with_something_chosen() -> None:
    label = encode({"digit": ["one"], "tags": []})
    assert result_items(label, "i") == [
        {"from_name": "digit", "to_name": "i", "type": "choices", "value": {"choices": ["one"]}}
    ]
