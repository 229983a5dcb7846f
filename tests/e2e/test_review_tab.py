"""The label-review queue against a real Label Studio: flipped annotations are listed by
GET /projects/{id}/suspects, and the project's Data Manager tab "labelloop: review" selects
exactly their tasks.

Red and blue images (test_loop's), not digits: with the random-init backbone this offline
machine has (``weights = "none"``), colour is what the embeddings separate reliably, so a
flipped label is a label error the model can see (bench/suspects.py measures digits).
"""

from __future__ import annotations

import asyncio
from typing import Any

from service.labelstudio.client import LabelStudio
from service.labelstudio.views import review_filters
from tests.e2e.test_loop import LABEL_CONFIG, color_of, make_images

REVIEW_TAB = "labelloop: review"
FINISHED = ("succeeded", "failed", "skipped")


def test_flipped_annotations_are_suspects_and_the_review_tab_selects_them(
    label_studio: Any, labelloop_serve: Any, poll_until: Any
) -> None:
    ls = label_studio
    project_id = ls.create_project("labelloop e2e review", LABEL_CONFIG)
    files = make_images(n_per_class=12, seed=4321)
    tasks = sorted(ls.import_images(project_id, files), key=lambda t: t["id"])
    assert len(tasks) == 24
    names = list(files)
    ll = labelloop_serve(project_id, threshold=1000)  # trained on request only
    done = ll.run_cli("register", "--project", str(project_id))
    assert done.returncode == 0, (done.stdout, done.stderr)

    reds = [t for t in tasks if color_of(t, names) == "red"]
    blues = [t for t in tasks if color_of(t, names) == "blue"]
    flipped = {reds[3]["id"], blues[5]["id"]}
    annotations: dict[int, dict] = {}
    for task in tasks:
        colour = color_of(task, names)
        if task["id"] in flipped:
            colour = "blue" if colour == "red" else "red"
        annotations[task["id"]] = ls.annotate(task["id"], colour)
    ll.wait_for(lambda s: s["annotations"] == 24, 60, "24 annotations folded")

    r = ll.client.post(f"/projects/{project_id}/train", headers=ll.auth)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    status = ll.wait_for(
        lambda s: any(
            j["id"] == job_id and j["status"] in ("succeeded", "failed") for j in s["jobs"]
        ),
        240,
        "the manual retrain finished",
    )
    [job] = [j for j in status["jobs"] if j["id"] == job_id]
    assert job["status"] == "succeeded", job

    r = ll.client.get(f"/projects/{project_id}/suspects", headers=ll.auth)
    assert r.status_code == 200, r.text
    found = r.json()
    assert ll.client.get(f"/projects/{project_id}/suspects").status_code == 401
    by_task = {s["task"]: s for s in found}
    assert flipped <= set(by_task), (flipped, found)
    assert {s["task"] for s in found[:2]} == flipped, found  # most suspicious first
    for task_id in flipped:
        suspect = by_task[task_id]
        annotation = annotations[task_id]
        assert suspect["annotation"] == annotation["id"]
        assert suspect["annotator"] == annotation["completed_by"]  # Label Studio's user id
        given = annotation["result"][0]["value"]["choices"][0]
        assert suspect["label"] == given and suspect["predicted"] != given
        assert 0.0 < suspect["score"] <= 1.0

    # Label Studio holds the review tab, and its filter selects exactly the suspects' tasks.
    def review_tab() -> dict | None:
        r = ls.client.get("/api/dm/views/", params={"project": project_id})
        assert r.status_code == 200, r.text
        tabs = [v for v in r.json() if v["data"].get("title") == REVIEW_TAB]
        assert len(tabs) <= 1, tabs
        return tabs[0] if tabs else None

    tab = poll_until(review_tab, 30, f"the {REVIEW_TAB!r} tab in Label Studio")
    r = ls.client.get(
        "/api/tasks/", params={"project": project_id, "view": tab["id"], "page_size": 100}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    listed = {t["id"] for t in (body["tasks"] if isinstance(body, dict) else body)}
    assert listed == set(by_task), (listed, found)

    # A second retrain updates the same tab, never adds one.
    r = ll.client.post(f"/projects/{project_id}/train", headers=ll.auth)
    second = r.json()["job_id"]
    ll.wait_for(
        lambda s: any(j["id"] == second and j["status"] == "succeeded" for j in s["jobs"]),
        240,
        "the second retrain succeeded",
    )
    assert review_tab()["id"] == tab["id"]

    # No suspects: the same tab then selects no task (an empty list is a filter Label Studio
    # accepts, not "every task").
    async def empty() -> None:
        async with LabelStudio(ls.url, ls.token) as client:
            await client.ensure_view(project_id, REVIEW_TAB, review_filters([]))

    asyncio.run(empty())
    r = ls.client.get("/api/tasks/", params={"project": project_id, "view": tab["id"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["tasks"] if isinstance(body, dict) else body) == [], body
