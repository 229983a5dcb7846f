"""The status page's "trained tags" part: which Choices tags a project's heads learn, and each
tag's own held-out figures (several Choices, or multiple choice). Dicts in, escaped markup out."""

from html import escape
from typing import Any


def tags_html(project: dict[str, Any]) -> str:
    """A line naming the trained tags, and a table of each tag's figures when there are several
    tags or a multiple-choice one; "" for a project with none (unsupported)."""
    tags = project.get("trained_tags") or []
    if not tags:
        return ""
    names = " · ".join(
        f"<code>{escape(str(t['name']))}</code> "
        f'<span class="muted small">({"multiple" if t["multiple"] else "single"} choice, '
        f"{len(t['choices'])} choices)</span>"
        for t in tags
    )
    line = f'<p class="tags">Trained tags: {names}</p>'
    metrics = ((project.get("active_model") or {}).get("metrics")) or {}
    per_tag = metrics.get("targets") or {}
    if not per_tag:
        return line
    rows = "".join(_row(str(name), figures) for name, figures in per_tag.items())
    return (
        f"{line}<table><thead><tr><th>tag</th><th>kind</th><th>micro-F1 / accuracy</th>"
        "<th>macro-F1</th><th>subset accuracy</th><th>held out</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _row(name: str, m: dict[str, Any]) -> str:
    multiple = bool(m.get("multiple"))
    first = m.get("micro_f1") if multiple else m.get("accuracy")
    subset = m.get("subset_accuracy") if multiple else m.get("accuracy")
    return (
        f"<tr><td><code>{escape(name)}</code></td>"
        f"<td>{'multiple' if multiple else 'single'} choice</td>"
        f'<td class="num">{_pct(first)}</td><td class="num">{_pct(m.get("macro_f1"))}</td>'
        f'<td class="num">{_pct(subset)}</td>'
        f'<td class="num">{int(m.get("n_holdout") or 0)}</td></tr>'
    )


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "n/a"
