"""The status page's label-review section: suspects and per-annotator disagreement.

From the project's ``suspects`` (``storage.suspects.listing``: most suspicious first) and
``annotators`` (``annotator_rates``); each task links to the task in Label Studio's Data Manager.
Every value is escaped; numbers are formatted, never pasted.
"""

from html import escape
from typing import Any

from service.web import charts

MAX_SUSPECTS_SHOWN = 20
MAX_ANNOTATORS_SHOWN = 20
SUSPECT_COLOR = "#dc2626"


def section(project: dict[str, Any]) -> str:
    """The section's HTML, or "" for a project no head version has reviewed yet."""
    found: list[dict[str, Any]] | None = project.get("suspects")
    if found is None:
        return ""
    pid = int(project["id"])
    base = str(project.get("label_studio_url") or "").rstrip("/")
    count = len(found)
    heading = f"<h3>Label review: {count} suspect{'' if count == 1 else 's'}</h3>"
    intro = (
        '<p class="muted small">Annotations the model confidently disagrees with (confident '
        "learning on out-of-fold probabilities of the newest head version), most suspicious "
        "first. Score: one minus the probability the model gives the label annotators chose. "
        "They stay in training; in Label Studio the tab <b>labelloop: review</b> lists them. "
        f"All of them: <code>GET /projects/{pid}/suspects</code>.</p>"
    )
    if not found:
        table = '<p class="muted">none: the model agrees with every label it can judge</p>'
    else:
        table = _suspects(found[:MAX_SUSPECTS_SHOWN], base, pid)
        if count > MAX_SUSPECTS_SHOWN:
            table += f'<p class="muted">and {count - MAX_SUSPECTS_SHOWN} more</p>'
    return heading + intro + table + _annotators(project.get("annotators") or [])


def _suspects(found: list[dict[str, Any]], base: str, pid: int) -> str:
    rows = []
    for s in found:
        task = int(s["task"])
        link = f"{base}/projects/{pid}/data?task={task}"
        score = float(s["score"])
        rows.append(
            f'<tr><td class="nowrap"><a href="{escape(link)}" target="_blank" '
            f'rel="noopener noreferrer">task {task}</a></td>'
            f'<td class="num">{int(s["annotation"])}</td><td>{_e(s["label"])}</td>'
            f"<td>{_e(s['predicted'])}</td>"
            f"<td>{charts.bar(score, SUSPECT_COLOR, width_px=90)}</td>"
            f'<td class="num">{score:.2f}</td><td>{_annotator(s.get("annotator"))}</td></tr>'
        )
    return (
        '<table class="suspects"><thead><tr><th>task</th><th class="num">annotation</th>'
        '<th>label given</th><th>model says</th><th colspan="2">score</th><th>annotator</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _annotators(rates: list[dict[str, Any]]) -> str:
    if not rates:
        return ""
    rows = "".join(
        f"<tr><td>{_annotator(r.get('annotator'))}</td>"
        f'<td class="num">{int(r["annotations"])}</td><td class="num">{int(r["suspects"])}</td>'
        f"<td>{charts.bar(float(r['rate']), SUSPECT_COLOR, width_px=90)}</td>"
        f'<td class="num">{float(r["rate"]):.1%}</td></tr>'
        for r in rates[:MAX_ANNOTATORS_SHOWN]
    )
    return (
        "<h3>Disagreement by annotator</h3>"
        '<table class="fit annotators"><thead><tr><th>annotator</th>'
        '<th class="num">labels</th><th class="num">suspects</th>'
        f'<th colspan="2">share suspected</th></tr></thead><tbody>{rows}</tbody></table>'
        '<p class="muted small">Labels: the annotator\'s current labeled annotations. A high '
        "share can mean a misunderstood class as much as careless work: look at the "
        "suspects.</p>"
    )


def _annotator(annotator: Any) -> str:
    if annotator is None:
        return '<span class="muted">unknown</span>'
    return f"user {int(annotator)}"


def _e(value: Any) -> str:
    return escape(str(value))
