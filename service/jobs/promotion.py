"""The promotion gate: does a new version replace the active one?

A version is compared with the active one on the same held-out tasks and the current labels
(or, with cross-validation, with the active version's own cross-validated figure). It is
promoted unless its macro-F1 is worse by more than ``promotion_margin``; a changed label set
always promotes (the old head cannot even name the new classes). A refused version is kept,
not pushed, and can still be activated by hand.
"""

from dataclasses import dataclass
from typing import Any

from service.vision.head import Metrics


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(
    new: Metrics | None,
    new_labels: list[str],
    active: Any,
    active_on_same_tasks: Metrics | None,
    margin: float,
) -> Decision:
    """``active`` is the active version's row or None; ``active_on_same_tasks`` its metrics on
    the new version's held-out tasks, when it could be evaluated there (same backbone)."""
    if active is None:
        return Decision(True, "first version")
    if sorted(active.labels) != sorted(new_labels):
        return Decision(True, "the label set changed")
    if new is None:
        return Decision(True, "too few labels to evaluate; the newest labels win")
    if active_on_same_tasks is not None:
        baseline, basis = active_on_same_tasks.macro_f1, "on the same held-out tasks"
    elif active.metrics and "macro_f1" in active.metrics:
        baseline, basis = float(active.metrics["macro_f1"]), "as cross-validated"
    else:
        return Decision(True, f"no comparable figure for {active.version}")
    figures = f"macro-F1 {new.macro_f1:.3f} vs {active.version}'s {baseline:.3f} {basis}"
    if new.macro_f1 >= baseline - margin:
        return Decision(True, figures)
    return Decision(False, f"kept, not promoted: {figures} (margin {margin:g})")
