"""What annotators see is labelloop's active version, against a real Label Studio:

- a reinstall (a fresh database) on a project holding an earlier install's predictions names
  its versions apart from them and pushes its own to every unlabeled task;
- after several retrains Label Studio holds labelloop's predictions under the project's one name
  only (an older labelloop's per-version names are deleted), another model's survive, and no
  task holds two of labelloop's;
- tasks imported while a retrain runs end with the retrain's version, not the one active when
  they were imported (whose push, queued then, would set the project back to it).

A retrain is held in the middle deterministically: one task's image is served by the test,
which answers it one byte at a time until told to let it through.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.e2e.test_loop import LABEL_CONFIG, color_of, make_images

HOLD_LIMIT = 120.0  # the longest the gate holds an image (a failing test must still end)


class ImageGate:
    """Serves one PNG at /held.png: 404 while closed, a trickle while holding, all when open."""

    def __init__(self, picture: bytes) -> None:
        self.picture = picture
        self.mode = "closed"
        self.requested = threading.Event()  # a download arrived while holding
        self.released = threading.Event()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/held.png" or gate.mode == "closed":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(gate.picture)))
                self.end_headers()
                sent = 0
                if gate.mode == "holding":
                    gate.requested.set()
                    deadline = time.monotonic() + HOLD_LIMIT
                    # A byte a second keeps the download alive (under any read timeout).
                    while not gate.released.wait(1.0) and time.monotonic() < deadline:
                        self.wfile.write(gate.picture[sent : sent + 1])
                        self.wfile.flush()
                        sent += 1
                self.wfile.write(gate.picture[sent:])

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/held.png"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def gate() -> Any:
    picture = next(iter(make_images(n_per_class=1, seed=7).values()))
    gate = ImageGate(picture)
    try:
        yield gate
    finally:
        gate.close()


def settled(status: dict) -> bool:
    """An active model, and every job of the project finished."""
    return status["active_model"] is not None and all(
        job["status"] not in ("queued", "running") for job in status["jobs"]
    )


def shows(ls: Any, project_id: int, version: str, unlabeled: set[int]) -> bool:
    """Label Studio shows `version`, with exactly one prediction of it on every unlabeled task."""
    project_version = ls.project(project_id)["model_version"]
    assert project_version == version, f"project model_version {project_version!r}, not {version}"
    per_task = Counter(
        p["task"] for p in ls.predictions(project_id) if p["model_version"] == version
    )
    assert all(n == 1 for n in per_task.values()), f"duplicate predictions: {per_task}"
    missing = unlabeled - set(per_task)
    assert not missing, f"{len(missing)} unlabeled tasks without a {version} prediction"
    return True


def shows_active(ls: Any, ll: Any, project_id: int, unlabeled: set[int]) -> str:
    """Label Studio shows labelloop's active version (read now), everywhere; returns it."""
    status = ll.status()
    assert settled(status), f"jobs still running: {status['jobs']}"
    version = str(status["active_model"]["label_studio_version"])
    shows(ls, project_id, version, unlabeled)
    return version


def annotate_some(ls: Any, tasks: list[dict], names: list[str], per_class: int) -> list[int]:
    """Label `per_class` not yet labeled tasks of each colour; returns their ids."""
    done: list[int] = []
    for color in ("red", "blue"):
        todo = [t for t in tasks if not t.get("labeled") and color_of(t, names) == color]
        for task in todo[:per_class]:
            ls.annotate(task["id"], color)
            task["labeled"] = True
            done.append(task["id"])
    return done


def test_a_reinstall_names_its_versions_apart_and_pushes_its_own(
    label_studio: Any, labelloop_serve: Any, poll_until: Any
) -> None:
    ls = label_studio
    project_id = ls.create_project("labelloop e2e reinstall", LABEL_CONFIG)
    files = make_images(n_per_class=8, seed=31)
    names = list(files)
    tasks = sorted(ls.import_images(project_id, files), key=lambda t: t["id"])

    first = labelloop_serve(project_id, threshold=6)
    assert first.run_cli("register", "--project", str(project_id)).returncode == 0
    labeled = set(annotate_some(ls, tasks, names, per_class=3))
    first_model = first.wait_for(settled, 240, "the first install's model")["active_model"]
    old = first_model["label_studio_version"]
    assert old == "labelloop", first_model
    poll_until(lambda: shows(ls, project_id, old, {t["id"] for t in tasks} - labeled), 60, old)
    first.stop()

    # A fresh install: a new, empty database; the same project, its predictions still there.
    old_versions = set(ls.client.get(f"/api/projects/{project_id}/model-versions/").json())
    assert old in old_versions
    for hook in ls.webhooks(project_id):
        ls.client.delete(f"/api/webhooks/{hook['id']}/")
    second = labelloop_serve(project_id, threshold=6)
    assert second.run_cli("register", "--project", str(project_id)).returncode == 0
    labeled |= set(annotate_some(ls, tasks, names, per_class=3))

    def retrained(status: dict) -> bool:
        return settled(status) and any(j["status"] == "succeeded" for j in status["jobs"])

    model = second.wait_for(retrained, 240, "the fresh install's model")["active_model"]
    assert model["version"] not in old_versions, (model, old_versions)
    # The fresh install chooses a name of its own: the earlier one's predictions are not its.
    assert model["label_studio_version"] == "labelloop-2", model
    unlabeled = {t["id"] for t in tasks} - labeled
    assert len(unlabeled) == 4
    version = poll_until(lambda: shows_active(ls, second, project_id, unlabeled), 60, "ours")
    assert version not in old_versions, (version, old_versions)
    # The earlier install's are left alone: labelloop deletes only what it knows is its own.
    versions = ls.client.get(f"/api/projects/{project_id}/model-versions/").json()
    assert versions.get(old) == 16 - 6, versions


def test_tasks_imported_during_a_retrain_get_the_promoted_version(
    label_studio: Any, labelloop_serve: Any, poll_until: Any, gate: ImageGate
) -> None:
    ls = label_studio
    project_id = ls.create_project("labelloop e2e stale push", LABEL_CONFIG)
    files = make_images(n_per_class=8, seed=41)
    names = list(files)
    tasks = sorted(ls.import_images(project_id, files), key=lambda t: t["id"])
    # One more task, its image at the gate (404 for now: the first training skips it).
    r = ls.client.post(f"/api/projects/{project_id}/import", json=[{"image": gate.url}])
    assert r.status_code == 201, r.text
    [held] = [t for t in ls.tasks(project_id) if t["data"]["image"] == gate.url]

    ll = labelloop_serve(project_id, threshold=6)
    assert ll.run_cli("register", "--project", str(project_id)).returncode == 0
    labeled = set(annotate_some(ls, tasks, names, per_class=3))
    v1 = ll.wait_for(settled, 240, "the first model")["active_model"]["version"]

    # The retrain's download of the held image hangs: the retrain is running, past its listing.
    gate.mode = "holding"
    labeled |= set(annotate_some(ls, tasks, names, per_class=3))
    assert gate.requested.wait(120), "the retrain never fetched the held image"

    more = make_images(n_per_class=5, seed=42)
    imported = ls.import_images(project_id, more)  # TASKS_CREATED: a push of v1 is queued
    ll.wait_for(
        lambda s: any(j["reason"] == "new-tasks" and j["status"] == "queued" for j in s["jobs"]),
        30,
        "the new tasks' push, queued behind the retrain",
    )
    assert any(j["status"] == "running" for j in ll.status()["jobs"]), "the retrain ended early"
    gate.mode = "open"
    gate.released.set()

    status = ll.wait_for(settled, 240, "the retrain and the push")
    assert status["active_model"]["version"] != v1, f"the retrain was not promoted: {status}"
    unlabeled = {t["id"] for t in imported} - labeled
    assert held["id"] in unlabeled and len(unlabeled) == 4 + 1 + 10
    poll_until(lambda: shows_active(ls, ll, project_id, unlabeled), 60, "the active version")


def test_retrains_leave_one_name_one_prediction_per_task_and_another_models_intact(
    label_studio: Any, labelloop_serve: Any, poll_until: Any
) -> None:
    ls = label_studio
    project_id = ls.create_project("labelloop e2e versions", LABEL_CONFIG)
    files = make_images(n_per_class=10, seed=51)
    names = list(files)
    tasks = sorted(ls.import_images(project_id, files), key=lambda t: t["id"])
    ll = labelloop_serve(project_id, threshold=4)
    assert ll.run_cli("register", "--project", str(project_id)).returncode == 0

    def retrained(count: int) -> Any:
        def check(status: dict) -> bool:
            done = [j for j in status["jobs"] if j["kind"] != "push" and j["status"] == "succeeded"]
            return settled(status) and len(done) >= count

        return check

    labeled = set(annotate_some(ls, tasks, names, per_class=2))
    ll.wait_for(retrained(1), 240, "the first model")
    # An older labelloop pushed each version under its own name: its labelloop-v1 is in Label
    # Studio beside another model's predictions.
    others = [t["id"] for t in tasks if t["id"] not in labeled][:6]
    theirs = [
        {"task": t, "model_version": model, "score": 0.5,
         "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                     "value": {"choices": ["red"]}}]}
        for t in others for model in ("their-model", "labelloop-v1")
    ]  # fmt: skip
    r = ls.client.post(f"/api/projects/{project_id}/import/predictions", json=theirs)
    assert r.status_code == 201, r.text
    before = sorted(
        p["id"] for p in ls.predictions(project_id) if p["model_version"] == "their-model"
    )

    for round_ in (2, 3, 4):
        labeled |= set(annotate_some(ls, tasks, names, per_class=2))
        ll.wait_for(retrained(round_), 240, f"retrain {round_}")

    status = ll.status()
    name = status["active_model"]["label_studio_version"]
    assert name == "labelloop" and status["active_model"]["version"] != "labelloop-v1"
    unlabeled = {t["id"] for t in tasks} - labeled
    poll_until(lambda: shows_active(ls, ll, project_id, unlabeled), 60, "the active version")
    versions = ls.client.get(f"/api/projects/{project_id}/model-versions/").json()
    assert set(versions) == {name, "their-model"}, versions  # labelloop-v1 is gone
    after = sorted(
        p["id"] for p in ls.predictions(project_id) if p["model_version"] == "their-model"
    )
    assert after == before  # never deleted, nor replaced
    per_task = Counter(p["task"] for p in ls.predictions(project_id) if p["model_version"] == name)
    assert max(per_task.values()) == 1, per_task
    assert versions[name] == len(per_task)
