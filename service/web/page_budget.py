"""The status page's label budget: which classes gained most from the labels added lately.

From the history of versions: each version's held-out F1 per class (its stored metrics) and the
number of labels of each class it was trained on (``storage.models.label_counts``). The newest
two evaluated versions are compared: per class, the labels added in between and how much its F1
moved, sorted by that gain, so a team sees where new labels paid off and where more of the same
did nothing (label elsewhere, or look at the confusion matrix). Held-out tasks differ from
version to version as the data grows, so small moves are noise; the page says so.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

VERSIONS = 4  # versions whose F1 the trend column shows (and whose label counts are read)
GAIN_COLOR = "#16a34a"
LOSS_COLOR = "#dc2626"


@dataclass(frozen=True)
class Gain:
    label: str
    f1: list[float | None]  # oldest first, over the versions compared (up to VERSIONS)
    labels_before: int | None
    labels_after: int | None

    @property
    def change(self) -> float | None:
        """F1 of the newest version minus the one before (None if either is unknown)."""
        before, after = (self.f1[-2], self.f1[-1]) if len(self.f1) > 1 else (None, None)
        return None if before is None or after is None else after - before

    @property
    def added(self) -> int | None:
        if self.labels_before is None or self.labels_after is None:
            return None
        return self.labels_after - self.labels_before


def gains(
    versions: Sequence[Mapping[str, Any]],
    counts: Mapping[str, Mapping[str, int]],
    order: Sequence[str],
) -> tuple[list[Gain], str, str] | None:
    """Per class of ``order`` (the label config's), its F1 across the newest evaluated
    versions (``versions`` newest first, as the page lists them) and its labels in the last
    two; sorted by the last change, largest first. None with fewer than two such versions.
    Returns (gains, older version's name, newer version's name)."""
    evaluated = [v for v in versions if (v.get("metrics") or {}).get("per_class")][:VERSIONS]
    if len(evaluated) < 2:
        return None
    evaluated.reverse()  # oldest first
    older, newer = evaluated[-2], evaluated[-1]
    seen = [c for c in order if any(c in v["metrics"]["per_class"] for v in evaluated)]
    seen += sorted({c for v in evaluated for c in v["metrics"]["per_class"]} - set(seen))
    rows = []
    for label in seen:
        f1 = [_f1(v, label) for v in evaluated]
        before = counts.get(str(older["version"]))
        after = counts.get(str(newer["version"]))
        rows.append(
            Gain(
                label,
                f1,
                None if before is None else before.get(label, 0),
                None if after is None else after.get(label, 0),
            )
        )
    rows.sort(key=lambda g: -g.change if g.change is not None else float("inf"))
    return rows, str(older["version"]), str(newer["version"])


def section(
    versions: Sequence[Mapping[str, Any]],
    counts: Mapping[str, Mapping[str, int]],
    order: Sequence[str],
) -> str:
    """The label budget's HTML, or a line saying what it needs."""
    found = gains(versions, counts, order)
    if found is None:
        return '<p class="muted">Shown from the second evaluated version on.</p>'
    rows, older, newer = found
    best = rows[0].label if rows and (rows[0].change or 0) > 0 else None
    body = "".join(_row(g, g.label == best) for g in rows)
    return (
        '<div class="scroll"><table class="budget"><thead><tr><th>class</th>'
        '<th class="num">labels (added)</th><th class="num">F1 by version</th>'
        f'<th class="num">F1 change</th></tr></thead><tbody>{body}</tbody></table></div>'
        f'<p class="muted small">Per class: the labels {_e(newer)} was trained on (added since '
        f"{_e(older)}), the held-out F1 of the last versions (oldest first), and its change "
        "from the one before to the newest, largest gain first. Held-out tasks change as "
        "labels grow: a few points either way can be noise.</p>"
    )


def _row(g: Gain, best: bool) -> str:
    change = g.change
    if change is None:
        shown = "n/a"
    else:
        color = GAIN_COLOR if change > 0 else LOSS_COLOR if change < 0 else "inherit"
        shown = f'<span style="color:{color}">{change * 100:+.1f} pts</span>'
    if g.labels_after is None:
        labels = "n/a"
    else:
        added = g.added
        extra = f' <span class="muted">({added:+d})</span>' if added else ""
        labels = f"{g.labels_after}{extra}"
    trend = " → ".join(_pct(f) for f in g.f1)
    name = f'<b title="gained most">{_e(g.label)} ▲</b>' if best else _e(g.label)
    return (
        f'<tr><td class="nowrap">{name}</td><td class="num nowrap">{labels}</td>'
        f'<td class="num nowrap">{trend}</td>'
        f'<td class="num nowrap">{shown}</td></tr>'
    )


def _f1(version: Mapping[str, Any], label: str) -> float | None:
    figures = version["metrics"]["per_class"].get(label) or {}
    value = figures.get("f1")
    return float(value) if isinstance(value, int | float) else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _e(value: Any) -> str:
    return escape(str(value))
