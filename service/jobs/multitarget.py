"""The jobs' side of several Choices (or multiple choice): encoded labels in, a MultiHead out.

Labels of such a project are encoded strings (service/labelstudio/targets.py); the vision
library trains on plain ``{tag: [choices]}`` answers (service/vision/multitarget.py). This
module translates both ways, so the pipeline, the gate and the push keep handling one label
string per task.
"""

from typing import Any

import torch

from service.jobs.embedding import EmbedReport
from service.jobs.threads import in_daemon_thread
from service.jobs.versions import Fitted
from service.labelstudio.targets import decode, encode, targets_of
from service.vision.backbone import BackboneSpec
from service.vision.head import Head
from service.vision.multitarget import MultiHead, MultiResult, TargetSpec, train_targets

FINETUNE_REFUSED = (
    "finetune supports a single single-choice Choices; use mode = head for several Choices "
    "or multiple choice"
)


def specs_of(stored: Any) -> list[TargetSpec]:
    """The vision specs of a ``projects.targets`` value."""
    return [TargetSpec(t.from_name, t.choices, t.multiple) for t in targets_of(stored)]


async def fit_targets(
    spec: BackboneSpec,
    stored_targets: Any,
    ids: list[int],
    x: torch.Tensor,
    y: list[str],
    report: EmbedReport,
    attempted: set[int],
) -> Fitted:
    """A head per target on the labeled embeddings ``x`` (task ``ids``, encoded labels ``y``);
    raises ``TargetError`` for a target that cannot be trained yet."""
    answers = [decode(label) for label in y]
    result: MultiResult = await in_daemon_thread(
        train_targets, x, answers, ids, specs_of(stored_targets)
    )
    fitted = Fitted(spec, result.head, result.metrics, ids, x, y, report.vectors, attempted)
    fitted.predictions = {t: encode(a) for t, a in result.held_out.items()}
    return fitted


def mismatch(head: Head | MultiHead, project: Any) -> str | None:
    """Why a stored version cannot predict under the project's config now (its Choices tags
    changed since it was trained: a push before the retrain), or None when it can."""
    if isinstance(head, MultiHead):
        now = [(s.name, s.multiple) for s in specs_of(project.targets)]
        if [(s.name, s.multiple) for s in head.specs] == now:
            return None
    elif not project.targets:
        return None
    return "the active version was trained for other Choices tags than the config has now; retrain"


def predict_encoded(head: MultiHead, embeddings: torch.Tensor) -> list[tuple[str, float]]:
    """Per row: the encoded label every target predicts, and the least confident one's score."""
    return [(encode(answer), score) for answer, score in head.predict(embeddings)]
