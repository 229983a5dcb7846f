"""Restarting labelloop after Label Studio went on without it: the state catches up, no webhook."""

from __future__ import annotations

from typing import Any

from test_loop import LABEL_CONFIG, color_of, make_images


def test_restart_catches_up_missed_annotations_and_retrains(
    label_studio: Any, labelloop_serve: Any
) -> None:
    ls = label_studio
    project_id = ls.create_project("labelloop e2e catch-up", LABEL_CONFIG)
    files = make_images(n_per_class=5, seed=7)
    names = list(files)
    tasks = sorted(ls.import_images(project_id, files), key=lambda t: t["id"])
    reds = [t for t in tasks if color_of(t, names) == "red"]
    blues = [t for t in tasks if color_of(t, names) == "blue"]

    ll = labelloop_serve(project_id, threshold=5)
    assert ll.run_cli("register", "--project", str(project_id)).returncode == 0
    kept = ls.annotate(reds[0]["id"], "red")
    doomed = ls.annotate(blues[0]["id"], "blue")
    ll.wait_for(lambda s: s["annotations"] == 2, 30, "two annotations by webhook")

    ll.stop()
    # Annotators go on while labelloop is down: their webhooks fail and are never resent.
    for task in reds[1:3] + blues[1:3]:
        ls.annotate(task["id"], color_of(task, names))
    ls.relabel(kept["id"], "blue")
    ls.delete_annotation(doomed["id"])

    ll.launch()
    # 2 - 1 deleted + 4 created = 5 annotations; 4 created + 1 updated + 1 deleted = 6 changes.
    status = ll.wait_for(
        lambda s: (
            s["annotations"] == 5
            and s["active_model"] is not None
            and s["jobs"][0]["status"] == "succeeded"
        ),
        180,
        "the missed annotations folded in and a retrain",
    )
    assert status["active_model"]["trained_on"] == 5
    assert status["jobs"][0]["reason"] == "threshold"
