"""The promotion gate: does a new version replace the active one?

Both are scored on the same held-out tasks, neither trained on them (``versions.compare``
builds the ``Comparison``: the new version's held-out predictions against the active
version's recipe refit without those tasks). The new version is refused only when its
macro-F1 there is lower by more than ``promotion_margin`` plus the noise of that difference
(``service.vision.compare``), which shrinks as the held-out tasks grow. A difference within
that, a tie included, promotes the version with more labels. A changed label set always
promotes (the old head cannot even name the new classes), and so does a version that cannot be
compared fairly, with the reason in the note. A refused version is kept, not pushed, and can
still be activated by hand.
"""

from dataclasses import dataclass
from typing import Any

from service.vision.metrics import Metrics


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class Comparison:
    """The new version and the active one on the same held-out tasks, neither trained on them."""

    against: str  # the active version
    n: int  # held-out tasks both were scored on
    new_f1: float
    old_f1: float
    noise: float  # how large a difference chance alone makes plausible
    how: str  # how the active version was kept off those tasks, for the note


def decide(
    new: Metrics | None,
    new_labels: list[str],
    active: Any,
    comparison: Comparison | str | None,
    margin: float,
    *,
    trained_on: int,
) -> Decision:
    """``active`` is the active version's row or None; ``comparison`` the fair comparison with
    it, or why there is none; ``trained_on`` the new version's number of labels."""
    if active is None:
        return Decision(True, "first version")
    if sorted(active.labels) != sorted(new_labels):
        return Decision(True, "the label set changed")
    if new is None:
        return Decision(True, "too few labels to evaluate; the newest labels win")
    if not isinstance(comparison, Comparison):
        why = comparison or f"no comparison with {active.version}"
        return Decision(True, f"promoted without comparison: {why}; the newest labels win")
    c = comparison
    figures = (
        f"macro-F1 {c.new_f1:.3f} vs {c.against}'s {c.old_f1:.3f} "
        f"on the same {c.n} held-out tasks ({c.how})"
    )
    shortfall = c.old_f1 - c.new_f1
    allowed = margin + c.noise
    if shortfall > allowed:
        return Decision(
            False,
            f"kept, not promoted: {figures}: lower by {shortfall:.3f}, more than the margin "
            f"{margin:g} + noise {c.noise:.3f}",
        )
    if c.new_f1 - c.old_f1 > c.noise:
        return Decision(True, f"promoted: {figures}")
    labels = f"{trained_on} labels vs {active.trained_on}"
    within = f"within noise (margin {margin:g} + noise {c.noise:.3f})"
    if trained_on >= active.trained_on:
        return Decision(True, f"promoted: {figures}; {within}, more labels wins ({labels})")
    return Decision(
        False, f"kept, not promoted: {figures}; {within}, {c.against} has more labels ({labels})"
    )
