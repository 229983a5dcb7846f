"""A realistic project history written with the storage functions, for the status page tests.

Project 3 ("Garden birds"): 3 versions with rising accuracy (v3 active), succeeded, failed and
running jobs, two images that failed to load, three annotators and four suspects (the
label-review queue). Project 4: a text project labelloop cannot train.
"""

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from service.vision.metrics import compute_metrics
from storage import events, jobs, labels, models, suspects
from storage.db import utcnow
from storage.tables import jobs as jobs_table
from storage.tables import model_versions

BIRDS = 3
TEXT = 4
CLASSES = ("blackbird", "robin", "sparrow")
# (trained on, confusion of the held-out tasks, the previous version's macro-F1 on them)
VERSIONS = [
    (20, [[7, 1, 0], [2, 1, 1], [1, 1, 2]], None),
    (36, [[12, 1, 0], [2, 3, 1], [1, 1, 5]], 0.512),
    (52, [[17, 0, 1], [1, 6, 1], [0, 1, 9]], 0.694),
]
FAILED_JOB_ERROR = (
    "LabelStudioUnavailable: GET http://label-studio:8080/api/projects/3/tasks: "
    "ConnectError after 5 attempts"
)
ANNOTATORS = (11, 12, 13)  # Label Studio user ids; annotation n is by ANNOTATORS[n % 3]
SUSPECTS = {9: 0.97, 30: 0.91, 12: 0.84, 45: 0.62}  # task -> score (its annotation: task + 1000)
IMAGE_ERRORS = {
    17: "download failed: http 404",
    41: "not decodable: cannot identify image file",
}


def metrics_of(confusion: list[list[int]], labels_: list[str]) -> dict[str, Any]:
    """The pipeline's metrics JSON for a confusion matrix (rows true, columns predicted)."""
    true: list[int] = []
    predicted: list[int] = []
    for t, row in enumerate(confusion):
        for p, count in enumerate(row):
            true += [t] * count
            predicted += [p] * count
    return compute_metrics(true, predicted, labels_).to_dict()


def seed(
    conn: Connection, *, title: str = "Garden birds", classes: Sequence[str] = CLASSES
) -> None:
    """Write the history above; ``title`` and ``classes`` may be hostile (escaping tests)."""
    start = utcnow() - timedelta(days=2)
    labels.save_project(
        conn,
        BIRDS,
        {
            "title": title,
            "label_config": "<View>...</View>",
            "image_key": "image",
            "from_name": "species",
            "to_name": "image",
            "choices": list(classes),
            "unsupported_reason": None,
        },
    )
    labels.save_project(
        conn,
        TEXT,
        {
            "title": "Review sentiment",
            "unsupported_reason": "the label config has no <Image> tag: only image "
            "classification is supported",
        },
    )
    labels.save_tasks(
        conn, BIRDS, [{"id": t, "data": {"image": f"/data/upload/3/{t}.jpg"}} for t in range(1, 71)]
    )
    for task_id, error in IMAGE_ERRORS.items():
        labels.set_task_image(conn, task_id, image_hash=None, error=error)
    for n in range(1, 53):
        when = (start + timedelta(minutes=20 * n)).isoformat()
        row = {"id": n + 1000, "task_id": n, "project_id": BIRDS, "label": classes[n % 5 // 2]}
        row["annotator"] = ANNOTATORS[n % 3]
        labels.save_annotations(
            conn, [{**row, "was_cancelled": False, "deleted": False, "updated_at": when}]
        )
        labels.count_changes(conn, {BIRDS: 1})
        body = {"action": "ANNOTATION_CREATED", "project": {"id": BIRDS}, "n": n}
        event = events.append(
            conn, action="ANNOTATION_CREATED", project_id=BIRDS, body=json.dumps(body)
        )
        events.mark_folded(conn, [event.id])  # its annotation is applied above
    for index, (trained_on, confusion, baseline) in enumerate(VERSIONS, start=1):
        queued = start + timedelta(hours=8 * index)
        job_id = _finished_job(conn, "threshold", "train", queued, 41, f"labelloop-v{index}")
        version = models.next_version(conn, BIRDS)
        metrics = metrics_of(confusion, list(classes))
        promotion = "first version"
        if baseline is not None:
            promotion = (
                f"macro-F1 {metrics['macro_f1']:.3f} vs labelloop-v{index - 1}'s {baseline:.3f} "
                "on the same held-out tasks"
            )
        models.add(
            conn,
            BIRDS,
            version,
            {
                "job_id": job_id,
                "backbone": "resnet18/imagenet/224",
                "labels": list(classes),
                "trained_on": trained_on,
                # the first `trained_on` tasks, labelled as the annotations below say
                "training_labels": {str(n): classes[n % 5 // 2] for n in range(1, trained_on + 1)},
                "metrics": metrics,
                "head": b"",
                "settings": {},
                "promotion": promotion,
            },
        )
        models.activate(conn, BIRDS, version)
        created = queued + timedelta(seconds=40)
        conn.execute(
            model_versions.update()
            .where(model_versions.c.version == version)
            .values(created_at=created)
        )
        if index == 2:  # a nightly fine-tune that could not reach Label Studio
            _finished_job(
                conn, "schedule", "finetune", queued + timedelta(hours=2), 12, None, "failed"
            )
    rows = [
        {
            "task": task,
            "annotation": task + 1000,
            "label": classes[task % 5 // 2],
            "predicted": classes[(task % 5 // 2 + 1) % 3],
            "score": score,
            "annotator": ANNOTATORS[task % 3],
        }
        for task, score in SUSPECTS.items()
    ]
    suspects.replace(conn, BIRDS, "labelloop-v3", rows)
    job_id, _ = jobs.enqueue(conn, BIRDS, "threshold")
    jobs.claim(conn)
    jobs.heartbeat(conn, job_id, {"stage": "embedding", "done": 24, "total": 70}, lease=1)


def _finished_job(
    conn: Connection,
    reason: str,
    kind: str,
    queued: datetime,
    seconds: int,
    version: str | None,
    status: str = "succeeded",
    project: int = BIRDS,
) -> int:
    job_id, _ = jobs.enqueue(conn, project, reason, kind=kind)
    jobs.claim(conn)
    progress: dict[str, Any] = {"stage": "done", "done": 70, "total": 70}
    if status == "succeeded":
        progress["images"] = {"cached": 50, "embedded": 18, "failed": 2, "forward_passes": 18}
        progress["pushed"] = 18
    else:
        progress = {"stage": "listing tasks"}
    jobs.heartbeat(conn, job_id, progress, lease=1)
    error = FAILED_JOB_ERROR if status == "failed" else None
    jobs.finish(conn, job_id, status, lease=1, error=error, model_version=version)
    conn.execute(
        jobs_table.update()
        .where(jobs_table.c.id == job_id)
        .values(
            created_at=queued,
            started_at=queued + timedelta(seconds=1),
            finished_at=queued + timedelta(seconds=1 + seconds),
        )
    )
    return job_id


DIGITS = 5
# Label config order: not alphabetical (alphabetically Eight, Five, Four, Nine, One, ...).
DIGIT_CLASSES = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")
# Labels per class of each version (config order), and the held-out recall per class: v3 adds
# labels to Three, Five and Eight; Eight gains most, Three a little, Five nothing.
DIGIT_COUNTS = [
    [10, 10, 10, 10, 10, 10, 10, 10, 10, 10],
    [20, 20, 20, 20, 20, 20, 20, 20, 20, 20],
    [20, 20, 20, 40, 20, 40, 20, 20, 60, 20],
]
DIGIT_RECALL = [
    [0.9, 0.9, 0.6, 0.5, 0.7, 0.6, 0.8, 0.7, 0.4, 0.6],
    [1.0, 1.0, 0.7, 0.6, 0.8, 0.7, 0.9, 0.8, 0.5, 0.7],
    [1.0, 1.0, 0.7, 0.7, 0.8, 0.7, 0.9, 0.8, 0.9, 0.7],
]


def seed_digits(conn: Connection) -> None:
    """Project 5 ("Digits"): ten classes in the label config's (non-alphabetical) order, three
    versions whose stored metrics list the classes alphabetically, as the head sorts them."""
    start = utcnow() - timedelta(days=1)
    labels.save_project(
        conn,
        DIGITS,
        {
            "title": "Digits",
            "label_config": "<View>...</View>",
            "image_key": "image",
            "from_name": "digit",
            "to_name": "image",
            "choices": list(DIGIT_CLASSES),
            "unsupported_reason": None,
        },
    )
    alphabetical = sorted(DIGIT_CLASSES)
    for index, (counts, recall) in enumerate(zip(DIGIT_COUNTS, DIGIT_RECALL, strict=True), 1):
        training: dict[str, str] = {}
        task = 10_000
        for name, count in zip(DIGIT_CLASSES, counts, strict=True):
            for _ in range(count):
                task += 1
                training[str(task)] = name
        confusion = _confusion_with_recall(
            alphabetical, dict(zip(DIGIT_CLASSES, recall, strict=True))
        )
        queued = start + timedelta(hours=4 * index)
        job_id = _finished_job(
            conn, "manual", "train", queued, 20, f"labelloop-v{index}", project=DIGITS
        )
        version = models.next_version(conn, DIGITS)
        models.add(
            conn,
            DIGITS,
            version,
            {
                "job_id": job_id,
                "backbone": "resnet18/imagenet/224",
                "labels": alphabetical,
                "trained_on": len(training),
                "training_labels": training,
                "metrics": metrics_of(confusion, alphabetical),
                "head": b"",
                "settings": {},
                "promotion": "first version" if index == 1 else "promoted: more labels",
            },
        )
        models.activate(conn, DIGITS, version)


def _confusion_with_recall(names: list[str], recall: dict[str, float]) -> list[list[int]]:
    """Ten held-out tasks per class; a class's misses go to the next class (alphabetically)."""
    confusion = [[0] * len(names) for _ in names]
    for i, name in enumerate(names):
        right = round(recall[name] * 10)
        confusion[i][i] = right
        confusion[i][(i + 1) % len(names)] = 10 - right
    return confusion
