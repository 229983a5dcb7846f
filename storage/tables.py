"""Every table of labelloop, in one SQLAlchemy Core MetaData (Alembic's target).

The event log (``events``) is the source of truth; ``projects``, ``tasks`` and ``annotations``
are folded from it. ``jobs``, ``embeddings`` and ``model_versions`` hold the work and its results.
Times are timezone-aware UTC.
"""

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

UTC_TIME = sa.DateTime(timezone=True)

# Every accepted webhook body, verbatim, in arrival order. ``folded`` flips once the body has
# been applied to the label state, in the same transaction, so each event is folded once.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("received_at", UTC_TIME, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),  # webhook | catch-up
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("project_id", sa.Integer, nullable=True),
    sa.Column("body", sa.Text, nullable=False),
    # sha256 of the body: an identical redelivery is acknowledged but stored once. NULL for
    # actions that mean "do it again" when repeated (START_TRAINING).
    sa.Column("digest", sa.String(64), nullable=True, unique=True),
    sa.Column("folded", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index(
        "ix_events_unfolded",
        "id",
        sqlite_where=sa.text("folded = 0"),
        postgresql_where=sa.text("NOT folded"),
    ),
    sa.Index("ix_events_project_id", "project_id"),
)

# One row per Label Studio project labelloop has heard of, with its parsed label config.
# ``changes`` counts every annotation change that altered training data; jobs snapshot it.
projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("title", sa.String(512), nullable=False, server_default=""),
    sa.Column("label_config", sa.Text, nullable=False, server_default=""),
    sa.Column("image_key", sa.String(255)),
    sa.Column("from_name", sa.String(255)),
    sa.Column("to_name", sa.String(255)),
    sa.Column("choices", sa.JSON),
    # NULL for the classic project (one single-choice Choices: from_name, choices); else every
    # Choices bound to the Image, [{"from_name", "choices", "multiple"}], and labels are encoded
    # (service/labelstudio/targets.py)
    sa.Column("targets", sa.JSON),
    sa.Column("unsupported_reason", sa.Text),
    sa.Column("changes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", UTC_TIME, nullable=False),
    # When catch-up last compared the project with Label Studio; NULL: never (learn it first).
    sa.Column("caught_up_at", UTC_TIME),
    # The one model_version every labelloop prediction of this project carries in Label Studio
    # (whichever labelloop version made it), chosen at the first push; NULL: none pushed yet.
    sa.Column("label_studio_version", sa.String(64)),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("project_id", sa.Integer, nullable=False, index=True),
    sa.Column("data", sa.JSON, nullable=False),
    # sha256 of the image bytes last fetched for this task: the embedding cache key's first half.
    sa.Column("image_hash", sa.String(64)),
    # the URI (task data) those bytes came from: a task whose URI changed is fetched again.
    sa.Column("image_uri", sa.Text),
    sa.Column("image_error", sa.Text),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
)

# Current annotations. Deleted ones stay as tombstones so a late, out-of-order create cannot
# resurrect them; ``label`` is NULL for skipped (was_cancelled) or unreadable annotations.
annotations = sa.Table(
    "annotations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("task_id", sa.Integer, nullable=False, index=True),
    sa.Column("project_id", sa.Integer, nullable=False, index=True),
    sa.Column("label", sa.Text),  # a choice, or an encoded label (several Choices)
    sa.Column("was_cancelled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("updated_at", sa.String(64), nullable=False),  # Label Studio's ISO timestamp
    # Label Studio's result list, as JSON text: labels are read from it again whenever the
    # project's label config changes (service/ingest/relabel.py). NULL on tombstones.
    sa.Column("result", sa.Text),
    # Label Studio's ``completed_by`` (a user id); NULL when it was not sent, or before 0007.
    sa.Column("annotator", sa.Integer),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    # train (head) | finetune | push
    sa.Column("kind", sa.String(16), nullable=False, server_default="train"),
    sa.Column("reason", sa.String(16), nullable=False),  # threshold | schedule | manual
    sa.Column("status", sa.String(16), nullable=False),  # queued|running|succeeded|failed|skipped
    sa.Column("created_at", UTC_TIME, nullable=False),
    sa.Column("started_at", UTC_TIME),
    sa.Column("heartbeat_at", UTC_TIME),
    sa.Column("finished_at", UTC_TIME),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # projects.changes when the job started: later changes count toward the next trigger.
    sa.Column("change_mark", sa.Integer),
    sa.Column("progress", sa.JSON),
    # train: the version it produced; push: the version whose predictions it pushes.
    sa.Column("model_version", sa.String(64)),
    sa.Column("note", sa.Text),  # e.g. why a new version was kept but not promoted
    sa.Column("error", sa.Text),
    sa.Index("ix_jobs_project_id_id", "project_id", "id"),
    # At most one queued job of each kind, and one running job, per project, whichever
    # process asks: triggers coalesce, and two workers never run one project at once.
    sa.Index(
        "uq_jobs_one_queued",
        "project_id",
        "kind",
        unique=True,
        sqlite_where=sa.text("status = 'queued'"),
        postgresql_where=sa.text("status = 'queued'"),
    ),
    sa.Index(
        "uq_jobs_one_running",
        "project_id",
        unique=True,
        sqlite_where=sa.text("status = 'running'"),
        postgresql_where=sa.text("status = 'running'"),
    ),
)

# Backbone embeddings keyed by image content and by the exact embedding function, shared by
# every process: relabeling costs no forward pass, and neither does predicting a known image.
embeddings = sa.Table(
    "embeddings",
    metadata,
    sa.Column("image_hash", sa.String(64), primary_key=True),
    sa.Column("backbone", sa.String(255), primary_key=True),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),  # float32, little-endian
    sa.Column("created_at", UTC_TIME, nullable=False),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("job_id", sa.Integer),
    sa.Column("backbone", sa.String(255), nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("trained_on", sa.Integer, nullable=False),
    # task id (as a string) -> label, the labels it was trained on as they were, so the gate
    # can refit its recipe without the tasks it scores it on; NULL for versions made before
    sa.Column("training_labels", sa.JSON),
    sa.Column("metrics", sa.JSON),
    sa.Column("head", sa.LargeBinary, nullable=False),
    # finetune versions: the fine-tuned ResNet without its classifier (torch.save state dict)
    sa.Column("backbone_weights", sa.LargeBinary),
    sa.Column("settings", sa.JSON, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("promotion", sa.Text),  # why the gate promoted it, or kept it inactive
    sa.Column("created_at", UTC_TIME, nullable=False),
    sa.UniqueConstraint("project_id", "version", name="uq_model_versions_project_version"),
)

# What Label Studio holds of labelloop's, per task: one row per (project, task) holding a
# prediction under projects.label_studio_version. ``state`` is ``pushed``, or ``uncertain``: a
# write to Label Studio for the task began and its outcome is unknown (checked task by task at
# the next push). ``version`` is the labelloop version whose prediction it is.
pushed = sa.Table(
    "pushed",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("task_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pushed | uncertain
)

# The label-review queue: the annotations the newest head version's out-of-fold probabilities
# confidently disagree with (service/vision/suspects.py), one row per task, replaced as a whole
# after each head retrain. ``label`` is the label trained on; a suspect whose annotation has
# since changed or gone is not listed (storage/suspects.py reads them against ``annotations``).
suspects = sa.Table(
    "suspects",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("task_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("annotation_id", sa.Integer, nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("label", sa.String(255), nullable=False),
    sa.Column("predicted", sa.String(255), nullable=False),
    sa.Column("score", sa.Float, nullable=False),  # 0..1, higher is more suspicious
    sa.Column("annotator", sa.Integer),
)
