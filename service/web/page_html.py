"""The status page's HTML, from the JSON of ``service.web.status`` (plus versions and threshold).

Plain functions: dicts in, markup out. Every value that came from a database, Label Studio or
a user goes through ``html.escape``; numbers are formatted, never pasted.
"""

from datetime import datetime
from html import escape
from typing import Any

from service.web import charts, page_budget, page_suspects
from service.web.page_targets import tags_html

MAX_VERSIONS_SHOWN = 10
MAX_CONFUSION_CLASSES = 30
REFRESH_SECONDS = 15  # while a job is queued or running
CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#111827;font:14px/1.45 system-ui,-apple-system,
'Segoe UI',Roboto,sans-serif}
header.top{background:#111827;color:#f9fafb;padding:14px 28px;display:flex;align-items:baseline;
gap:18px;flex-wrap:wrap}
header.top h1{font-size:18px;margin:0}header.top a{color:#93c5fd;text-decoration:none}
header.top nav{display:flex;gap:14px;flex-wrap:wrap}header.top .end{margin-left:auto}
main{max-width:1200px;margin:0 auto;padding:20px 28px 40px}
section.project{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:20px 24px;
margin-bottom:24px}
h2{font-size:20px;margin:0 0 4px}h3{font-size:15px;margin:24px 0 8px;color:#374151}
.muted{color:#6b7280}.small{font-size:12px}.nowrap{white-space:nowrap}
.stats{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0 4px;align-items:stretch}
.stat{border:1px solid #e5e7eb;border-radius:8px;padding:10px 14px;min-width:118px;
display:flex;flex-direction:column;justify-content:center}
.stat>b{display:block;font-size:22px}
.model{flex:1;min-width:360px;background:#f8fafc}
.model .name{font-size:18px;font-weight:700}
.kpis{display:flex;gap:28px;margin:6px 0}.kpis b{display:block;font-size:22px}
.warn{background:#fef3c7;border:1px solid #fcd34d;border-radius:8px;padding:10px 14px}
.grid{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:32px}
table{border-collapse:collapse;width:100%}table.fit{width:auto}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #f0f1f3;vertical-align:top}
thead th{color:#6b7280;font-weight:600;font-size:12px;border-bottom:1px solid #e5e7eb;
white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto;max-width:100%}
table.confusion{width:auto}
table.confusion td{text-align:center;min-width:44px;padding:6px 6px;
font-variant-numeric:tabular-nums;border:2px solid #fff;border-radius:4px}
table.confusion thead th{font-size:11px;padding:5px 4px;text-align:center}
table.confusion td.zero{color:#c4c8cf}table.confusion .corner{font-weight:400}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.queued{background:#e5e7eb;color:#374151}.running{background:#dbeafe;color:#1d4ed8}
.succeeded{background:#dcfce7;color:#166534}.failed{background:#fee2e2;color:#991b1b}
.skipped{background:#fef3c7;color:#92400e}.active{background:#dbeafe;color:#1d4ed8}
.error{color:#991b1b;font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;
word-break:break-word}
code{font-family:ui-monospace,monospace;font-size:12px;white-space:nowrap}
form.login{max-width:380px;margin:80px auto;background:#fff;border:1px solid #e5e7eb;
border-radius:10px;padding:24px}
form.login input{display:block;width:100%;padding:8px;margin:6px 0 14px;font:inherit}
form.login button{padding:8px 16px;font:inherit}
form.out{display:inline}form.out button{border:0;background:none;padding:0;color:inherit;
text-decoration:underline;cursor:pointer;font:inherit}
"""


def render(projects: list[dict[str, Any]], *, now: datetime, sign_out: bool = False) -> str:
    """The whole page; it reloads itself every few seconds while a job waits or runs.
    ``sign_out``: the page is behind the sign-in form, so it offers to sign out."""
    busy = any(j["status"] in ("queued", "running") for p in projects for j in p["jobs"])
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if busy else ""
    count = f"{len(projects)} project{'' if len(projects) == 1 else 's'}"
    nav = "".join(
        f'<a href="#project-{int(p["id"])}">{_e(p["title"] or p["id"])}</a>' for p in projects
    )
    out = (
        ' · <form class="out" method="post" action="/logout"><button>sign out</button></form>'
        if sign_out
        else ""
    )
    body = "".join(_project(p) for p in projects) or (
        '<section class="project"><h2>No projects yet</h2><p>A project appears here after its '
        "first webhook; <code>labelloop register --project ID</code> connects one.</p></section>"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"{refresh}<title>labelloop status</title><style>{CSS}</style></head><body>"
        f'<header class="top"><h1>labelloop</h1><nav>{nav}</nav>'
        f'<span class="end muted">{count} · {now:%Y-%m-%d %H:%M:%S} UTC · '
        f'<a href="/metrics">metrics</a>{out}</span></header>'
        f"<main>{body}</main></body></html>"
    )


def login(message: str) -> str:
    """The sign-in form: one token field, POSTed to ``/login`` (never in a URL)."""
    note = f'<p class="error">{_e(message)}</p>' if message else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>labelloop: sign in'
        f"</title><style>{CSS}</style></head><body>"
        '<form class="login" method="post" action="/login">'
        '<h2>labelloop</h2><p class="muted">The status page needs the server\'s API token '
        "(<code>server.api_token</code>).</p>"
        f'{note}<label for="token">API token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        'required autofocus><button type="submit">Show status</button></form></body></html>'
    )


def _project(p: dict[str, Any]) -> str:
    pid = int(p["id"])
    parts = [
        f'<section class="project" id="project-{pid}"><h2>{_e(p["title"] or "(untitled)")} '
        f'<span class="muted">project {pid}</span></h2>'
    ]
    if not p["supported"]:
        parts.append(f'<p class="warn">Not trained here: {_e(p["unsupported_reason"])}</p>')
    threshold = p.get("threshold")
    changes = f"{int(p['changes_since_last_job'])}"
    if isinstance(threshold, int):
        changes += f' <span class="muted small">of {threshold}</span>'
    stats = [
        _stat(_e(p["events"]), "events received"),
        _stat(_e(p["annotations"]), "annotations"),
        _stat(_e(p["labeled_tasks"]), "labeled tasks"),
        _stat(changes, "changes toward retraining"),
    ]
    active = p["active_model"]
    if p["supported"] or active:
        stats.append(_active(active))
    parts.append(f'<div class="stats">{"".join(stats)}</div>{tags_html(p)}')
    if not p["supported"] and not (p["versions"] or p["jobs"]):
        return "".join(parts) + "</section>"
    metrics = in_order((active or {}).get("metrics") or {}, p.get("choices") or [])
    chart = _chart(p["versions"])
    if chart or metrics.get("per_class"):
        parts.append(
            f'<div class="grid"><div><h3>Held-out quality by version</h3>{chart or _none()}'
            f"</div><div><h3>Recall per class</h3>{_recall(metrics)}</div></div>"
        )
        budget = page_budget.section(
            p["versions"], p.get("label_counts") or {}, metrics.get("labels") or []
        )
        confusion = _confusion(metrics) if metrics.get("confusion") else _none()
        parts.append(
            f'<div class="grid"><div><h3>Confusion matrix</h3>{confusion}</div>'
            f"<div><h3>Label budget: what recent labels changed</h3>{budget}</div></div>"
        )
    parts.append(page_suspects.section(p))
    parts.append(f"<h3>Versions</h3>{_versions(p['versions'])}")
    parts.append(f"<h3>Recent jobs</h3>{_jobs(p['jobs'])}")
    parts.append(f"<h3>Images that failed to load</h3>{_failures(p['image_failures'])}")
    return "".join(parts) + "</section>"


def _stat(value_html: str, name: str) -> str:
    return f'<div class="stat"><b>{value_html}</b><span class="muted">{_e(name)}</span></div>'


def _active(model: dict[str, Any] | None) -> str:
    if model is None:
        return (
            '<div class="stat model"><span class="muted">active version</span>'
            '<div class="name">none yet</div><div class="muted small">The first training '
            "starts when enough annotations have changed, or on request.</div></div>"
        )
    m = model.get("metrics") or {}
    kpis = [(_pct(m.get("accuracy")), "accuracy"), (_pct(m.get("macro_f1")), "macro-F1")]
    kpis.append((str(int(model["trained_on"])), "labels trained on"))
    shown = "".join(f'<div><b>{v}</b><span class="muted">{n}</span></div>' for v, n in kpis)
    evaluated = _e(_scheme(m)) if m else "not evaluated: too few labels to hold any out"
    return (
        '<div class="stat model"><span class="muted">active version</span> '
        f'<span class="name">{_e(model["version"])}</span>'
        f'<div class="kpis">{shown}</div><div class="muted small">{evaluated}'
        f"{' · ' + _e(model['promotion']) if model.get('promotion') else ''}</div></div>"
    )


def _chart(versions: list[dict[str, Any]]) -> str:
    accuracy, f1 = [], []
    for v in reversed(versions):  # oldest first
        m = v.get("metrics") or {}
        if not isinstance(m.get("accuracy"), int | float):
            continue
        tip = (
            f"{v['version']}: {v['trained_on']} labels, accuracy {_pct(m['accuracy'])}, "
            f"macro-F1 {_pct(m.get('macro_f1'))}"
        )
        accuracy.append(charts.Point(v["trained_on"], m["accuracy"], tip, v["active"]))
        if isinstance(m.get("macro_f1"), int | float):
            f1.append(charts.Point(v["trained_on"], m["macro_f1"], tip, v["active"]))
    return charts.line_chart(
        [
            charts.Series("accuracy", charts.ACCURACY_COLOR, accuracy),
            charts.Series("macro-F1", charts.F1_COLOR, f1, dashed=True),
        ],
        title="Held-out accuracy and macro-F1 of each version, by labels trained on",
        x_title="labels trained on (ring: active version)",
        height=300,
    )


def in_order(metrics: dict[str, Any], choices: list[str]) -> dict[str, Any]:
    """``metrics`` with its classes (``labels``, the confusion's rows and columns) in the
    label config's order, ``choices``; classes the config no longer has go last."""
    names = [str(n) for n in metrics.get("labels") or []]
    order = [c for c in choices if c in names] + [n for n in names if n not in choices]
    if order == names:
        return metrics
    where = [names.index(n) for n in order]
    result = {**metrics, "labels": order}
    confusion = metrics.get("confusion")
    if isinstance(confusion, list) and len(confusion) == len(names):
        result["confusion"] = [[confusion[i][j] for j in where] for i in where]
    return result


def _recall(metrics: dict[str, Any]) -> str:
    per_class = metrics.get("per_class") or {}
    if not per_class:
        return _none()
    order = [c for c in metrics.get("labels") or [] if c in per_class]
    order += [c for c in per_class if c not in order]
    rows = "".join(
        f"<tr><td>{_e(c)}</td><td>{charts.bar(_num(per_class[c].get('recall')))}</td>"
        f'<td class="num">{_pct(per_class[c].get("recall"))}</td>'
        f'<td class="num">{_pct(per_class[c].get("precision"))}</td>'
        f'<td class="num">{int(_num(per_class[c].get("support")))}</td></tr>'
        for c in order
    )
    return (
        '<table><thead><tr><th>class</th><th colspan="2">recall</th>'
        '<th class="num">precision</th><th class="num">held out</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
        '<p class="muted small">Of the active version, on held-out tasks. Recall: the share of a '
        "class the model finds.</p>"
    )


def _confusion(metrics: dict[str, Any]) -> str:
    names = [str(n) for n in metrics.get("labels") or []]
    if len(names) > MAX_CONFUSION_CLASSES:
        return _none(f"{len(names)} classes: too many to draw here.")
    return f'<div class="scroll">{charts.heatmap(names, metrics["confusion"])}</div>' + (
        '<p class="muted small">Rows: the label annotators gave; columns: the model\'s answer; '
        "shade: share of the row. Blue: right, red: confused.</p>"
    )


def _versions(versions: list[dict[str, Any]]) -> str:
    if not versions:
        return _none()
    rows = []
    for v in versions[:MAX_VERSIONS_SHOWN]:
        m = v.get("metrics") or {}
        badge = ' <span class="badge active">active</span>' if v["active"] else ""
        rows.append(
            f'<tr><td class="nowrap">{_e(v["version"])}{badge}</td>'
            f'<td class="nowrap">{_time(v["created_at"])}</td>'
            f'<td class="num">{int(v["trained_on"])}</td>'
            f'<td class="num">{_pct(m.get("accuracy"))}</td>'
            f'<td class="num">{_pct(m.get("macro_f1"))}</td>'
            f'<td class="muted">{_e(v.get("promotion") or "")}</td></tr>'
        )
    more = len(versions) - MAX_VERSIONS_SHOWN
    tail = _none(f"and {more} older") if more > 0 else ""
    return (
        '<table><thead><tr><th>version</th><th>created (UTC)</th><th class="num">labels</th>'
        '<th class="num">accuracy</th><th class="num">macro-F1</th><th>promotion</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>{tail}"
    )


def _jobs(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return _none()
    rows = []
    for j in jobs:
        st = str(j["status"])
        detail = _e(j.get("note") or "")
        if j.get("error"):
            detail += f'<div class="error">{_e(j["error"])}</div>'
        version = f"<code>{_e(j['model_version'])}</code>" if j.get("model_version") else ""
        rows.append(
            f"<tr><td>{int(j['id'])}</td><td>{_e(j['kind'])}</td><td>{_e(j['reason'])}</td>"
            f'<td><span class="badge {_e(st)}">{_e(st)}</span></td>'
            f"<td>{_progress(st, j.get('progress') or {})}</td>"
            f'<td class="nowrap">{_time(j["created_at"])}</td>'
            f'<td class="num nowrap">{_duration(j)}</td><td>{version}</td><td>{detail}</td></tr>'
        )
    return (
        "<table><thead><tr><th>#</th><th>kind</th><th>reason</th><th>status</th>"
        '<th>progress</th><th>queued (UTC)</th><th class="num">took</th><th>version</th>'
        f"<th>note / error</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _progress(status: str, progress: dict[str, Any]) -> str:
    stage, done, total = progress.get("stage"), progress.get("done"), progress.get("total")
    text = ""
    if status == "failed" and stage:
        text = f"stopped at: {_e(stage)}"
    elif status in ("queued", "running") and stage:
        text = _e(stage)
        if isinstance(done, int) and isinstance(total, int) and total > 0:
            text += f" {done}/{total}<br>{charts.bar(done / total, width_px=110)}"
    images = progress.get("images")
    if isinstance(images, dict):
        shown = ", ".join(f"{_e(v)} {_e(k)}" for k, v in images.items() if k != "forward_passes")
        text += f'<div class="muted small">images: {shown}</div>'
    if isinstance(progress.get("pushed"), int):
        text += f'<div class="muted small">{progress["pushed"]} predictions pushed</div>'
    return text


def _failures(failures: list[dict[str, Any]]) -> str:
    if not failures:
        return _none("none")
    rows = "".join(
        f'<tr><td class="nowrap">task {int(f["task"])}</td>'
        f'<td class="error">{_e(f["error"])}</td></tr>'
        for f in failures
    )
    return (
        f'<table class="fit"><tbody>{rows}</tbody></table><p class="muted small">These tasks '
        "are left out of training and prediction until their image loads.</p>"
    )


def _e(value: Any) -> str:
    return escape(str(value))


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "n/a"


def _scheme(metrics: dict[str, Any]) -> str:
    if metrics.get("scheme") == "holdout" and isinstance(metrics.get("n_holdout"), int):
        return f"measured on {metrics['n_holdout']} held-out tasks"
    scheme = str(metrics.get("scheme") or "")
    return f"measured by {scheme} cross-validation" if scheme.endswith("-fold") else scheme


def _none(text: str = "nothing yet") -> str:
    return f'<p class="muted">{_e(text)}</p>'


def _time(iso: str | None) -> str:
    return "" if not iso else _e(iso[:16].replace("T", " "))


def _duration(job: dict[str, Any]) -> str:
    try:
        started = datetime.fromisoformat(job["started_at"])
        finished = datetime.fromisoformat(job["finished_at"])
    except (TypeError, ValueError):
        return ""
    seconds = int((finished - started).total_seconds())
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"
