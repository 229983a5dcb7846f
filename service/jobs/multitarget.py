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


def predict_encoded(head: MultiHead, embeddings: torch.Tensor) -> list[tuple[str, float]]:
    """Per row: the encoded label every target predicts, and the least confident one's score."""
    return [(encode(answer), score) for answer, score in head.predict(embeddings)]
