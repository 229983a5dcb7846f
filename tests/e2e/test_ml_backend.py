"""labelloop added in Label Studio under Model → Connect model: Label Studio's own calls work."""

from __future__ import annotations

from typing import Any

from test_loop import LABEL_CONFIG, color_of, make_images


def test_connect_model_and_retrieve_predictions_through_label_studio(
    label_studio: Any, labelloop_serve: Any, poll_until: Any
) -> None:
    ls = label_studio
    project_id = ls.create_project("labelloop e2e ml backend", LABEL_CONFIG)
    files = make_images(n_per_class=4, seed=11)
    names = list(files)
    tasks = sorted(ls.import_images(project_id, files), key=lambda t: t["id"])
    ll = labelloop_serve(project_id, threshold=4)
    assert ll.run_cli("register", "--project", str(project_id)).returncode == 0

    # Model → Connect model, with Basic auth whose password is labelloop's API token.
    connected = ls.client.post(
        "/api/ml",
        json={
            "url": ll.url,
            "project": project_id,
            "title": "labelloop",
            "is_interactive": False,
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": "labelstudio",
            "basic_auth_pass": ll.token,
        },
    )
    assert connected.status_code == 201, connected.text

    labeled = [t for t in tasks if color_of(t, names) == "red"][:2]
    labeled += [t for t in tasks if color_of(t, names) == "blue"][:2]
    for task in labeled:
        ls.annotate(task["id"], color_of(task, names))
    status = ll.wait_for(
        lambda s: s["active_model"] is not None and s["jobs"][0]["status"] == "succeeded",
        180,
        "a trained model",
    )
    # /predict answers the name the pushed predictions carry, so Label Studio's view is one.
    version = status["active_model"]["label_studio_version"]
    target = next(t for t in tasks if t not in labeled)

    def mine() -> list[dict]:
        return [p for p in ls.predictions(project_id) if p["task"] == target["id"]]

    poll_until(lambda: len(mine()) == 1 or None, 60, "the pushed prediction")
    # Remove it, and let Label Studio ask labelloop's /predict for it again.
    for prediction in mine():
        assert ls.client.delete(f"/api/predictions/{prediction['id']}/").status_code == 204
    answer = ls.client.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project_id},
        json={"selectedItems": {"all": False, "included": [target["id"]]}},
    )
    assert answer.status_code == 200, answer.text
    [again] = poll_until(lambda: mine() or None, 60, "Label Studio's retrieved prediction")
    assert again["model_version"] == version
    [item] = again["result"]
    assert item["value"]["choices"][0] in ("red", "blue")
