"""Labels follow the label config: when it changes, every label is read again from its result.

An annotation's label is read from its result against the config (service.ingest.payloads
``read_label``): which Choices control, and which choices it offers. The raw result is stored on
the annotation row, so when a project's config changes (fixed after being unsupported, a choice
removed or added, another Choices name) its labels are re-derived in one pass over its
annotations and one set-based update, without replaying the event log. Every route a config
arrives by goes through here: the fold (a webhook's project object, catch-up's events), the
pipeline's project sync and the ML backend's /setup.

A re-derived label is a change to training data (counted toward the threshold, like the fold
counts changes) exactly when it differs from the stored one: the rows read are the live,
non-skipped annotations, so any difference adds or removes or changes a training label. The fold
re-derives in memory at the event that changed the config (service/ingest/fold.py), so that a
batch folds exactly like its events one at a time; the other routes, here, in one update.
"""

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Connection

from service.ingest.payloads import parse_json, project_label
from storage import labels

# The project columns a label is read with: a change to any of them re-derives.
LABEL_COLUMNS = ("from_name", "choices", "targets")


def reads_differently(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> bool:
    """Whether labels read under project row ``after`` may differ from under ``before``."""
    return any((before or {}).get(column) != after.get(column) for column in LABEL_COLUMNS)


def label_under(project: Mapping[str, Any], label: str | None, result: str | None) -> str | None:
    """The label of a live, non-skipped annotation (its stored ``label`` and ``result`` JSON)
    under project row ``project``."""
    choices = project.get("choices")
    if result is None:  # stored before results were, and not in the log: keep what still fits
        return label if label is not None and label in (choices or ()) else None
    return project_label(parse_json(result), project)


def relabel(conn: Connection, project_id: int, project: Mapping[str, Any]) -> int:
    """Re-derive the project's labels under ``project`` (its row); the number changed."""
    changed = [
        (row["id"], new)
        for row in labels.live_annotations(conn, project_id)
        if (new := label_under(project, row["label"], row["result"])) != row["label"]
    ]
    labels.set_labels(conn, changed)
    return len(changed)


def save_project(conn: Connection, project_id: int, values: Mapping[str, Any]) -> int:
    """``labels.save_project``, then re-derive the labels if the config now reads them
    differently; the changes are counted toward the threshold and returned."""
    stored = labels.get_project(conn, project_id)
    before = None if stored is None else dict(stored._mapping)
    labels.save_project(conn, project_id, values)
    after = {**(before or {}), **values}
    if not reads_differently(before, after):
        return 0
    changed = relabel(conn, project_id, after)
    labels.count_changes(conn, {project_id: changed})
    return changed
