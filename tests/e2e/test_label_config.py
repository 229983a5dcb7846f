"""A label config changed in Label Studio re-reads labelloop's labels (PROJECT_UPDATED webhook).

Annotations folded while the config was unsupported (here: a TextArea beside the Choices) get
their labels once it is fixed; a choice removed from the config stops being a training label
(Label Studio 1.23.2 accepts removing a choice that annotations use).
"""

from __future__ import annotations

from typing import Any

from test_loop import LABEL_CONFIG, color_of, make_images

UNSUPPORTED = LABEL_CONFIG.replace("</View>", '<TextArea name="notes" toName="image"/></View>')
WITH_GREEN = LABEL_CONFIG.replace('<Choice value="blue"/>', '<Choice value="green"/>')


def set_config(ls: Any, project_id: int, label_config: str) -> None:
    r = ls.client.patch(f"/api/projects/{project_id}/", json={"label_config": label_config})
    assert r.status_code == 200, r.text


def test_label_config_changes_re_derive_the_labels(label_studio: Any, labelloop_serve: Any) -> None:
    ls = label_studio
    project_id = ls.create_project("labelloop e2e label config", LABEL_CONFIG)
    files = make_images(n_per_class=2, seed=13)
    names = list(files)
    tasks = sorted(ls.import_images(project_id, files), key=lambda t: t["id"])
    ll = labelloop_serve(project_id, threshold=100)
    assert ll.run_cli("register", "--project", str(project_id)).returncode == 0

    set_config(ls, project_id, UNSUPPORTED)  # a TextArea: labelloop trains Choices only
    ll.wait_for(lambda s: not s["supported"], 30, "the unsupported config by webhook")
    for task in tasks:
        ls.annotate(task["id"], color_of(task, names))
    ll.wait_for(
        lambda s: s["annotations"] == 4 and s["labeled_tasks"] == 0, 30, "label-less annotations"
    )

    set_config(ls, project_id, LABEL_CONFIG)  # fixed
    ll.wait_for(lambda s: s["labeled_tasks"] == 4, 30, "labels once the config is fixed")

    set_config(ls, project_id, WITH_GREEN)  # Label Studio accepts it although "blue" is used
    status = ll.wait_for(lambda s: s["choices"] == ["red", "green"], 30, "the new choices")
    assert status["annotations"] == 4
    assert status["labeled_tasks"] == 2  # the "blue" annotations are no training labels now
