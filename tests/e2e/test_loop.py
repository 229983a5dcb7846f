"""The whole loop against a real Label Studio: register, annotate, retrain, predict, push back.

Also: webhook ingestion is idempotent and refuses callers without the shared secret.
"""

from __future__ import annotations

import io
import random
import sys
import time
from collections import Counter
from typing import Any

from PIL import Image, ImageDraw

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="label" toName="image"><Choice value="red"/><Choice value="blue"/></Choices>'
    "</View>"
)
SIZE = 64


def make_png(rng: random.Random, color: str) -> bytes:
    """A 64x64 image that is mostly `color` ("red" or "blue"), with shapes and pixel noise."""

    def main(lo: int = 150, hi: int = 255) -> int:
        return rng.randint(lo, hi)

    def low() -> int:
        return rng.randint(0, 70)

    base = (main(), low(), low()) if color == "red" else (low(), low(), main())
    img = Image.new("RGB", (SIZE, SIZE), base)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 5)):  # a few small distractor shapes in any colour
        x, y = rng.randint(0, SIZE - 8), rng.randint(0, SIZE - 8)
        w, h = rng.randint(4, 14), rng.randint(4, 14)
        fill = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=fill)
    raw = bytearray(img.tobytes())
    for i in range(len(raw)):
        raw[i] = max(0, min(255, raw[i] + rng.randint(-25, 25)))
    img = Image.frombytes("RGB", (SIZE, SIZE), bytes(raw))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_images(n_per_class: int = 8, seed: int = 1234) -> dict[str, bytes]:
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for color in ("red", "blue"):
        for i in range(n_per_class):
            files[f"{color}_{i:02d}.png"] = make_png(rng, color)
    return files


def color_of(task: dict, names: list[str]) -> str:
    """The colour of a task's image, from the uploaded file name at the end of its URL."""
    url = task["data"]["image"]
    [name] = [n for n in names if url.endswith(f"-{n}")]
    return name.split("_")[0]


class Clock:
    """Phase timings, printed to stderr (visible with -s, and in the report on failure)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.laps: list[str] = []

    def lap(self, what: str) -> None:
        now = time.monotonic()
        self.laps.append(f"{what}: {now - self.last:.1f} s")
        self.last = now

    def report(self) -> None:
        print("\n" + "\n".join(self.laps), file=sys.stderr)


def test_annotations_retrain_and_predictions_flow_back(
    label_studio: Any, labelloop_serve: Any, poll_until: Any
) -> None:
    ls = label_studio
    project_id = ls.create_project("labelloop e2e", LABEL_CONFIG)
    files = make_images()
    clock = Clock()
    tasks = ls.import_images(project_id, files)
    clock.lap(f"import {len(files)} images")
    assert len(tasks) == len(files) == 16
    for task in tasks:
        assert task["data"]["image"].startswith(f"/data/upload/{project_id}/"), task["data"]
    names = list(files)
    by_color: dict[str, list[dict]] = {"red": [], "blue": []}
    for task in sorted(tasks, key=lambda t: t["id"]):
        by_color[color_of(task, names)].append(task)
    assert {c: len(ts) for c, ts in by_color.items()} == {"red": 8, "blue": 8}

    ll = labelloop_serve(project_id, threshold=6)
    clock.lap("labelloop serve healthy")

    # register: exactly one hook, carrying the secret; registering again changes nothing.
    for attempt in (1, 2):
        done = ll.run_cli("register", "--project", str(project_id))
        assert done.returncode == 0, (attempt, done.stdout, done.stderr)
        hooks = ls.webhooks(project_id)
        assert len(hooks) == 1, (attempt, hooks)
        [hook] = hooks
        assert hook["url"] == ll.webhook_url, hook
        assert hook["headers"].get("X-Labelloop-Secret") == ll.secret, hook
        assert hook["is_active"] is True, hook
        assert hook["send_payload"] is True, hook
        assert hook["send_for_all_actions"] or "ANNOTATION_CREATED" in hook["actions"], hook
    clock.lap("register twice")

    # Annotate 3 red and 3 blue; Label Studio posts each webhook before answering.
    labeled = by_color["red"][:3] + by_color["blue"][:3]
    for task in labeled:
        ls.annotate(task["id"], color_of(task, names))
    unlabeled_ids = {t["id"] for t in tasks} - {t["id"] for t in labeled}
    assert len(unlabeled_ids) == 10
    clock.lap("6 annotations (webhooks delivered synchronously)")

    status = ll.wait_for(
        lambda s: (
            s["annotations"] == 6
            and s["active_model"] is not None
            and s["jobs"]
            and s["jobs"][0]["status"] == "succeeded"
        ),
        240,
        "6 annotations, an active model and a succeeded newest job",
    )
    clock.lap("retrained (newest job succeeded)")
    assert status["id"] == project_id
    assert status["events"] >= 6, status
    assert status["active_model"]["version"], status
    # Every version's predictions carry the project's one Label Studio name.
    version = status["active_model"]["label_studio_version"]
    assert version == "labelloop", status

    def pushed() -> list[dict]:
        mine = [p for p in ls.predictions(project_id) if p["model_version"] == version]
        per_task = Counter(p["task"] for p in mine)
        assert not [t for t, n in per_task.items() if n > 1], f"duplicate predictions: {per_task}"
        missing = unlabeled_ids - set(per_task)
        assert not missing, f"{len(missing)} unlabeled tasks without a {version} prediction"
        project_version = ls.project(project_id)["model_version"]
        assert project_version == version, f"project model_version is {project_version!r}"
        return mine

    predictions = poll_until(pushed, 60, f"predictions of {version} on all unlabeled tasks")
    clock.lap("predictions pushed and project model_version set")
    clock.report()
    assert {p["task"] for p in predictions} <= {t["id"] for t in tasks}
    for prediction in predictions:
        score = prediction["score"]
        assert score is not None and 0.0 <= score <= 1.0, prediction
        [item] = prediction["result"]
        assert item["type"] == "choices", prediction
        assert (item["from_name"], item["to_name"]) == ("label", "image"), prediction
        assert len(item["value"]["choices"]) == 1, prediction
        assert item["value"]["choices"][0] in {"red", "blue"}, prediction
        if "score" in item:
            assert 0.0 <= item["score"] <= 1.0, prediction

    final = ll.status()
    assert final["annotations"] == 6, final
    assert final["active_model"]["label_studio_version"] == version, final


def test_webhooks_are_idempotent_and_need_the_secret(
    label_studio: Any, labelloop_serve: Any, webhook_receiver: Any
) -> None:
    """Replays real ANNOTATION_CREATED bodies, as Label Studio sent them, straight to labelloop."""
    ls = label_studio
    project_id = ls.create_project("labelloop e2e webhooks", LABEL_CONFIG)
    files = make_images(n_per_class=1, seed=99)
    tasks = sorted(ls.import_images(project_id, files), key=lambda t: t["id"])
    assert len(tasks) == 2

    # labelloop learns the project (empty yet) on first sight; it is not registered in it.
    ll = labelloop_serve(project_id, threshold=1000)
    first_sight = ll.status()
    assert first_sight["annotations"] == 0
    learned = first_sight["events"]  # catch-up's TASKS_CREATED of the two tasks
    # Capture what Label Studio really sends.
    ls.add_webhook(project_id, webhook_receiver.url, ["ANNOTATION_CREATED"])
    bodies = []
    for task in tasks:
        annotation = ls.annotate(task["id"], color_of(task, list(files)))
        _, body = webhook_receiver.get(timeout=10)
        assert body["action"] == "ANNOTATION_CREATED"
        assert body["annotation"]["id"] == annotation["id"]
        bodies.append(body)
    first, second = bodies

    def counts() -> tuple[int, int]:
        s = ll.status()
        return s["events"] - learned, s["annotations"]

    r = ll.post_webhook(first)
    assert r.status_code < 300, (r.status_code, r.text)
    # Folding runs right after the answer, off the request path: wait for it, bounded.
    ll.wait_for(lambda s: s["annotations"] == 1, 30, "the first annotation folded")
    after_first = counts()
    assert after_first == (1, 1), after_first

    r = ll.post_webhook(first)  # the same delivery again
    assert r.status_code < 300, (r.status_code, r.text)
    assert counts() == after_first

    r = ll.post_webhook(second, secret=None)  # no secret header
    assert r.status_code == 401, (r.status_code, r.text)
    r = ll.post_webhook(second, secret="not-the-secret")
    assert r.status_code == 401, (r.status_code, r.text)
    assert counts() == after_first

    r = ll.post_webhook(second)  # the same body with the secret is accepted and counted
    assert r.status_code < 300, (r.status_code, r.text)
    ll.wait_for(lambda s: s["annotations"] == 2, 30, "the second annotation folded")
    assert counts() == (2, 2)
