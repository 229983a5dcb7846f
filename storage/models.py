"""Model versions of each project: the trained head, its metrics, and which one is active."""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from storage.db import utcnow
from storage.tables import model_versions

VERSION_PREFIX = "labelloop-v"


def next_version(conn: Connection, project_id: int, taken: Iterable[str] = ()) -> str:
    """The next version name: one past the highest number of this project's versions and of
    the names in ``taken`` (those Label Studio already holds predictions of, e.g. from an
    earlier install whose database is gone), so a name never stands for two models."""
    stmt = sa.select(model_versions.c.version).where(model_versions.c.project_id == project_id)
    names = [*conn.execute(stmt).scalars(), *taken]
    numbers = [int(n[len(VERSION_PREFIX) :]) for n in names if _numbered(n)]
    return f"{VERSION_PREFIX}{max(numbers, default=0) + 1}"


def _numbered(name: str) -> bool:
    number = name.removeprefix(VERSION_PREFIX)
    return name.startswith(VERSION_PREFIX) and number.isascii() and number.isdigit()


def add(conn: Connection, project_id: int, version: str, values: Mapping[str, Any]) -> None:
    """Store a version, inactive; ``activate`` makes it the one predictions come from.

    The head, its label map and the settings that made it are one row, written in the
    caller's transaction: a crash leaves either the whole version or none of it.
    """
    conn.execute(
        model_versions.insert().values(
            project_id=project_id, version=version, created_at=utcnow(), active=False, **values
        )
    )


class WeightsDeleted(Exception):
    """A fine-tuned version whose network was deleted (`drop_old_weights`) cannot predict."""

    def __init__(self, version: str) -> None:
        super().__init__(
            f"{version} is a fine-tuned version whose network weights were deleted: only the "
            "active version and the newest [training] keep_versions keep theirs. Activate a "
            "newer version, or retrain."
        )
        self.version = version


def activate(conn: Connection, project_id: int, version: str) -> bool:
    """Make ``version`` the only active version of the project, in one transaction.

    False when there is no such version; `WeightsDeleted` when its network is gone."""
    exists = conn.execute(
        sa.select(
            model_versions.c.settings, model_versions.c.backbone_weights.is_(None).label("gone")
        ).where(model_versions.c.project_id == project_id, model_versions.c.version == version)
    ).first()
    if exists is None:
        return False
    if exists.gone and (exists.settings or {}).get("mode") == "finetune":
        raise WeightsDeleted(version)
    conn.execute(
        model_versions.update()
        .where(model_versions.c.project_id == project_id)
        .values(active=model_versions.c.version == version)
    )
    return True


def active(conn: Connection, project_id: int) -> Row[Any] | None:
    stmt = sa.select(model_versions).where(
        model_versions.c.project_id == project_id, model_versions.c.active.is_(True)
    )
    return conn.execute(stmt).first()


def get(conn: Connection, project_id: int, version: str) -> Row[Any] | None:
    stmt = sa.select(model_versions).where(
        model_versions.c.project_id == project_id, model_versions.c.version == version
    )
    return conn.execute(stmt).first()


def listing(conn: Connection, project_id: int) -> Sequence[Row[Any]]:
    """Every version of a project without its weights (``has_weights``: whether it still has a
    fine-tuned network), newest first."""
    heavy = ("head", "backbone_weights", "training_labels")
    kept = model_versions.c.backbone_weights.is_not(None).label("has_weights")
    columns: list[sa.ColumnElement[Any]] = [c for c in model_versions.c if c.name not in heavy]
    stmt = (
        sa.select(*[*columns, kept])
        .where(model_versions.c.project_id == project_id)
        .order_by(model_versions.c.id.desc())
    )
    return conn.execute(stmt).all()


def drop_old_weights(conn: Connection, project_id: int, keep: int) -> list[str]:
    """Delete the stored networks (``backbone_weights``, 45-94 MB each) of the project's
    versions that are neither active nor among its newest ``keep``; the rows stay (history,
    a head is a few KB). Returns the backbone identities no version keeps weights of now."""
    newest = (
        conn.execute(
            sa.select(model_versions.c.id)
            .where(model_versions.c.project_id == project_id)
            .order_by(model_versions.c.id.desc())
            .limit(max(keep, 0))
        )
        .scalars()
        .all()
    )
    old = conn.execute(
        sa.select(model_versions.c.id, model_versions.c.backbone).where(
            model_versions.c.project_id == project_id,
            model_versions.c.backbone_weights.is_not(None),
            model_versions.c.active.is_(False),
            model_versions.c.id.not_in(newest),
        )
    ).all()
    if not old:
        return []
    conn.execute(
        model_versions.update()
        .where(model_versions.c.id.in_([row.id for row in old]))
        .values(backbone_weights=None)
    )
    gone = {str(row.backbone) for row in old}
    still_held = conn.execute(  # the same network kept by another version (same training)
        sa.select(model_versions.c.backbone).where(
            model_versions.c.backbone.in_(gone), model_versions.c.backbone_weights.is_not(None)
        )
    ).scalars()
    return sorted(gone - set(still_held))


def label_counts(conn: Connection, project_id: int, limit: int) -> dict[str, dict[str, int]]:
    """Version -> label -> how many labels of it the version was trained on, for those of the
    newest ``limit`` versions that kept their training labels (the status page's label budget)."""
    stmt = (
        sa.select(model_versions.c.version, model_versions.c.training_labels)
        .where(model_versions.c.project_id == project_id)
        .order_by(model_versions.c.id.desc())
        .limit(limit)
    )
    counts: dict[str, dict[str, int]] = {}
    for row in conn.execute(stmt):
        if row.training_labels is None:  # made before versions kept them
            continue
        per_label: dict[str, int] = {}
        for label in row.training_labels.values():
            per_label[str(label)] = per_label.get(str(label), 0) + 1
        counts[str(row.version)] = per_label
    return counts
