"""Several Choices and multiple choice against a real Label Studio: handwritten digits tagged
even / at least five / has a loop (one multiple-choice Choices), and digits labeled with two
single-choice Choices (parity, size). Each trains, and its predictions are what Label Studio
accepts and shows: one result per Choices tag, under the project's model_version."""

from __future__ import annotations

import re
import sys
from typing import Any

from bench.digits import digit_pngs

TAGS = {"even": "even", "five": "at least five", "loop": "has a loop"}
MULTI_LABEL = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="tags" toName="image" choice="multiple">'
    + "".join(f'<Choice value="{v}"/>' for v in TAGS.values())
    + "</Choices></View>"
)
TWO_CHOICES = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="parity" toName="image"><Choice value="odd"/><Choice value="even"/></Choices>'
    '<Choices name="size" toName="image"><Choice value="small"/><Choice value="large"/>'
    "</Choices></View>"
)
LABELED, UNLABELED = 40, 10


def tags_of(digit: int) -> list[str]:
    tags = []
    if digit % 2 == 0:
        tags.append(TAGS["even"])
    if digit >= 5:
        tags.append(TAGS["five"])
    if digit in (0, 6, 8, 9):
        tags.append(TAGS["loop"])
    return tags


def choices(from_name: str, chosen: list[str]) -> dict[str, Any]:
    return {"type": "choices", "from_name": from_name, "to_name": "image",
            "value": {"choices": chosen}}  # fmt: skip


def import_digits(ls: Any, project_id: int) -> list[tuple[dict, int]]:
    """LABELED + UNLABELED digit images as tasks, each with its digit (from the file name)."""
    pngs, digits = digit_pngs(LABELED + UNLABELED)
    files = {
        f"digit{i:03d}_{d}.png": png for i, (png, d) in enumerate(zip(pngs, digits, strict=True))
    }
    tasks = sorted(ls.import_images(project_id, files), key=lambda t: t["id"])
    found = []
    for task in tasks:
        match = re.search(r"digit\d{3}_(\d)\.png$", task["data"]["image"])
        assert match, task["data"]
        found.append((task, int(match[1])))
    return found


def annotate(ls: Any, task_id: int, result: list[dict]) -> None:
    r = ls.client.post(
        f"/api/tasks/{task_id}/annotations/", json={"result": result, "was_cancelled": False}
    )
    assert r.status_code == 201, r.text


def train_and_read(
    ls: Any, ll: Any, project_id: int, unlabeled: list[int], poll_until: Any
) -> tuple[dict, dict[int, dict]]:
    """Wait for the trained version and its pushed predictions: (status, task -> prediction)."""
    status = ll.wait_for(
        lambda s: s["active_model"] is not None and s["jobs"][0]["status"] == "succeeded",
        300,
        "an active version from a succeeded job",
    )
    name = status["active_model"]["label_studio_version"]

    def shown() -> dict[int, dict]:
        found: dict[int, dict] = {}
        for task_id in unlabeled:  # as the labeling UI asks for them
            r = ls.client.get("/api/predictions/", params={"task": task_id})
            assert r.status_code == 200, r.text
            [mine] = [p for p in r.json() if p["model_version"] == name]
            found[task_id] = mine
        assert ls.project(project_id)["model_version"] == name  # annotators see this version
        return found

    return status, poll_until(shown, 60, f"one {name} prediction per unlabeled task")


def test_a_multi_label_project_trains_and_label_studio_shows_several_choices(
    label_studio: Any, labelloop_serve: Any, poll_until: Any
) -> None:
    ls = label_studio
    project_id = ls.create_project("labelloop e2e multi-label digits", MULTI_LABEL)
    tasks = import_digits(ls, project_id)
    ll = labelloop_serve(project_id, threshold=LABELED)
    assert ll.run_cli("register", "--project", str(project_id)).returncode == 0
    for task, digit in tasks[:LABELED]:
        tags = tags_of(digit)  # a 1, 3 or 7 has none: an annotation that ticks nothing
        annotate(ls, task["id"], [choices("tags", tags)] if tags else [])
    unlabeled = [task["id"] for task, _ in tasks[LABELED:]]
    status, predictions = train_and_read(ls, ll, project_id, unlabeled, poll_until)

    assert status["trained_tags"] == [
        {"name": "tags", "choices": list(TAGS.values()), "multiple": True}
    ]
    metrics = status["active_model"]["metrics"]
    figures = metrics["targets"]["tags"]
    assert set(figures["per_label"]) == set(TAGS.values())
    assert 0.0 <= figures["micro_f1"] <= 1.0 and 0.0 <= figures["subset_accuracy"] <= 1.0
    print(f"\nmulti-label held-out micro-F1 {figures['micro_f1']:.3f}", file=sys.stderr)
    several = 0
    for prediction in predictions.values():
        assert 0.0 <= prediction["score"] <= 1.0, prediction
        for item in prediction["result"]:  # none when no tag is predicted
            assert (item["from_name"], item["to_name"], item["type"]) == (
                "tags", "image", "choices"
            ), prediction  # fmt: skip
            assert set(item["value"]["choices"]) <= set(TAGS.values()), prediction
            several += len(item["value"]["choices"]) >= 2
    assert several >= 1, predictions  # multi-label results carry several choices


def test_two_choices_train_a_head_each_and_label_studio_shows_both(
    label_studio: Any, labelloop_serve: Any, poll_until: Any
) -> None:
    ls = label_studio
    project_id = ls.create_project("labelloop e2e two Choices digits", TWO_CHOICES)
    tasks = import_digits(ls, project_id)
    ll = labelloop_serve(project_id, threshold=LABELED)
    assert ll.run_cli("register", "--project", str(project_id)).returncode == 0
    for task, digit in tasks[:LABELED]:
        parity = "even" if digit % 2 == 0 else "odd"
        size = "large" if digit >= 5 else "small"
        annotate(ls, task["id"], [choices("parity", [parity]), choices("size", [size])])
    unlabeled = [task["id"] for task, _ in tasks[LABELED:]]
    status, predictions = train_and_read(ls, ll, project_id, unlabeled, poll_until)

    assert [t["name"] for t in status["trained_tags"]] == ["parity", "size"]
    assert set(status["active_model"]["metrics"]["targets"]) == {"parity", "size"}
    for prediction in predictions.values():
        assert 0.0 <= prediction["score"] <= 1.0, prediction
        by_tag = {item["from_name"]: item["value"]["choices"] for item in prediction["result"]}
        assert sorted(by_tag) == ["parity", "size"], prediction  # one result per Choices tag
        assert by_tag["parity"][0] in ("odd", "even") and len(by_tag["parity"]) == 1
        assert by_tag["size"][0] in ("small", "large") and len(by_tag["size"]) == 1
