"""What most users do first: annotate in Label Studio, then install and register labelloop."""

from __future__ import annotations

from typing import Any

from test_loop import LABEL_CONFIG, color_of, make_images


def test_a_project_annotated_before_register_is_learned_and_trained_on(
    label_studio: Any, labelloop_serve: Any
) -> None:
    ls = label_studio
    project_id = ls.create_project("labelloop e2e annotated before register", LABEL_CONFIG)
    files = make_images(n_per_class=5, seed=21)
    names = list(files)
    tasks = ls.import_images(project_id, files)
    for task in tasks:  # ten labels that no webhook ever carried
        ls.annotate(task["id"], color_of(task, names))

    ll = labelloop_serve(project_id, threshold=1000)
    done = ll.run_cli("register", "--project", str(project_id))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert f"project {project_id} caught up: 10 annotations learned" in done.stdout, done.stdout

    shown = ll.run_cli("status", "--project", str(project_id))
    assert shown.returncode == 0, (shown.stdout, shown.stderr)  # 200, not 404
    assert "annotations 10" in shown.stdout, shown.stdout

    answer = ll.client.post(f"/projects/{project_id}/train", headers=ll.auth)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    status = ll.wait_for(
        lambda s: (
            next(j for j in s["jobs"] if j["id"] == job_id)["status"]
            in ("succeeded", "failed", "skipped")
        ),
        240,
        "the manual training to finish",
    )
    job = next(j for j in status["jobs"] if j["id"] == job_id)
    assert job["status"] == "succeeded", job
    assert status["active_model"]["trained_on"] == 10, status["active_model"]
