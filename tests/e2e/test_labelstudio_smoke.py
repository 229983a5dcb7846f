"""Label Studio on its own: the fixture's helpers and a webhook to a loopback receiver.

When the loop test fails, this one tells whether Label Studio (and the way the tests run it) is
to blame: it checks upload-import, task paging, image serving, annotations and webhook delivery
to 127.0.0.1 (which needs SSRF protection off) without labelloop.
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any

import httpx
from PIL import Image

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="label" toName="image"><Choice value="red"/><Choice value="blue"/></Choices>'
    "</View>"
)


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def test_label_studio_import_annotate_and_webhook(label_studio: Any, webhook_receiver: Any) -> None:
    ls = label_studio
    receiver = webhook_receiver
    project_id = ls.create_project("smoke", LABEL_CONFIG)

    files = {f"img{i}.png": png((40 * i, 0, 0)) for i in range(3)}
    t0 = time.monotonic()
    tasks = ls.import_images(project_id, files)
    import_s = time.monotonic() - t0
    assert len(tasks) == len(files), tasks
    # Uploaded files are stored as /data/upload/<project>/<8 hex>-<file name>.
    urls = [t["data"]["image"] for t in tasks]
    prefix = f"/data/upload/{project_id}/"
    assert all(url.startswith(prefix) for url in urls), urls
    assert sorted(url.removeprefix(prefix).split("-", 1)[1] for url in urls) == sorted(files)
    # Uploaded images are served with the API key, and refused without it.
    r = ls.client.get(urls[0])
    assert r.status_code == 200, r.text[:300]
    assert r.content in files.values()
    with httpx.Client(base_url=ls.url, timeout=30) as anonymous:
        assert anonymous.get(urls[0]).status_code in (401, 403)

    hook = ls.add_webhook(
        project_id, receiver.url, ["ANNOTATION_CREATED"], headers={"X-Labelloop-Secret": "s3cret"}
    )
    assert [h["id"] for h in ls.webhooks(project_id)] == [hook["id"]]

    task = tasks[0]
    t0 = time.monotonic()
    annotation = ls.annotate(task["id"], "red")
    annotate_s = time.monotonic() - t0
    headers, body = receiver.get(timeout=10)
    delivered_s = time.monotonic() - t0
    print(
        f"\nimport {len(files)} images: {import_s:.2f} s; annotate: {annotate_s:.2f} s; "
        f"webhook received {delivered_s:.2f} s after the annotate call started",
        file=sys.stderr,
    )

    assert headers["x-labelloop-secret"] == "s3cret"
    assert body["action"] == "ANNOTATION_CREATED"
    assert body["project"]["id"] == project_id
    assert body["project"]["label_config"] == LABEL_CONFIG
    assert body["annotation"]["id"] == annotation["id"]
    assert body["annotation"]["task"] == task["id"]
    assert body["annotation"]["was_cancelled"] is False
    [item] = body["annotation"]["result"]
    assert item["type"] == "choices"
    assert (item["from_name"], item["to_name"]) == ("label", "image")
    assert item["value"] == {"choices": ["red"]}
    assert body["task"]["id"] == task["id"]
    assert body["task"]["data"]["image"] == task["data"]["image"]

    # The task now carries the annotation; predictions start empty.
    assert ls.task(task["id"])["total_annotations"] == 1
    assert ls.predictions(project_id) == []
    assert ls.project(project_id)["id"] == project_id
