"""GET /: the status page through the real app, on a database written by the storage functions."""

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from service.app import create_app
from service.settings import DatabaseSettings, ServerSettings, Settings, TrainingSettings
from service.web import page, page_budget, page_html, page_targets, session
from storage import labels
from storage.db import create_engine
from tests import status_seed

TOKEN = "page-token-0123"
HOSTILE = "<script>alert('x')</script>"

Client = Callable[..., TestClient]


def no_label_studio(request: httpx.Request) -> httpx.Response:
    return httpx.Response(404, json={"detail": "not found"})


def seeded(url: str, **kwargs: object) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            status_seed.seed(conn, **kwargs)  # type: ignore[arg-type]
    finally:
        engine.dispose()


@pytest.fixture
def client(sqlite_url: str) -> Iterator[Client]:
    """``client(token=...)``: the app with the page's route, Label Studio answering 404."""
    with ExitStack() as stack:

        def make(
            token: str = TOKEN, forwarded: str = "127.0.0.1", base: str = "http://labelloop.test"
        ) -> TestClient:
            settings = Settings(
                server=ServerSettings(api_token=token, forwarded_allow_ips=forwarded),
                database=DatabaseSettings(url=sqlite_url),
                training=TrainingSettings(threshold=50, weights="none"),
            )
            transport = httpx.MockTransport(no_label_studio)
            app = create_app(settings, run_worker=False, transport=transport)
            if not any(getattr(r, "path", None) == "/" for r in app.router.routes):
                app.router.routes.append(Route("/", page.status_page, methods=["GET"]))
            return stack.enter_context(TestClient(app, base_url=base))

        yield make


def signed_in(client: Client) -> TestClient:
    c = client()
    answer = c.get(f"/?token={TOKEN}", follow_redirects=False)
    assert answer.status_code == 303
    return c


def test_page_shows_versions_chart_confusion_jobs_and_failures(
    sqlite_url: str, client: Client
) -> None:
    seeded(sqlite_url)
    answer = signed_in(client).get("/")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    html = answer.text
    assert "Garden birds" in html
    # the active version and its figures (v3: 32 of 36 held-out tasks right)
    assert "labelloop-v3" in html and "88.9%" in html
    assert "macro-F1 0.867 vs labelloop-v2&#x27;s 0.694" in html
    # the chart: one accuracy and one macro-F1 point per version
    svg = html[html.index("<svg") : html.index("</svg>")]
    assert svg.count("<circle") - svg.count('r="8"') == 6
    assert "labelloop-v1: 20 labels, accuracy 62.5%" in svg
    # recall per class and the confusion matrix
    for label in status_seed.CLASSES:
        assert f"<td>{label}</td>" in html
        assert f'<th scope="row">{label}</th>' in html
    assert '<table class="confusion">' in html and ">17</td>" in html
    # jobs: the failure's error, the running job's progress; image failures
    assert "ConnectError after 5 attempts" in html
    assert "embedding 24/70" in html
    assert 'class="badge failed"' in html and 'class="badge running"' in html
    for error in status_seed.IMAGE_ERRORS.values():
        assert error in html
    # counts, threshold, the unsupported project's reason
    assert "events received" in html and "of 50" in html
    assert "Review sentiment" in html and "no &lt;Image&gt; tag" in html
    assert '<meta http-equiv="refresh"' in html  # a job is running


@pytest.mark.parametrize("how", ["form", "query"])
def test_token_gives_a_signed_session_cookie_not_the_token(client: Client, how: str) -> None:
    c = client()
    if how == "form":
        answer = c.post("/login", data={"token": TOKEN}, follow_redirects=False)
    else:  # scripts' habit: still works, and the redirect takes the token out of the URL
        answer = c.get(f"/?token={TOKEN}", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{session.COOKIE}=") and TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http: the browser would drop a Secure cookie
    assert c.get("/").status_code == 200  # the cookie alone now opens the page
    assert 'action="/logout"' in c.get("/").text


@pytest.mark.parametrize(
    ("forwarded", "base", "headers", "secure"),
    [
        ("127.0.0.1", "https://labelloop.test", {}, True),  # https to labelloop itself
        ("*", "http://labelloop.test", {"X-Forwarded-Proto": "https"}, True),  # trusted proxy
        ("127.0.0.1", "http://labelloop.test", {"X-Forwarded-Proto": "https"}, False),  # not
        ("*", "http://labelloop.test", {"X-Forwarded-Proto": "http"}, False),
        ("*", "http://labelloop.test", {}, False),
    ],
    ids=["https", "trusted-proxy", "untrusted-proxy", "proxy-says-http", "plain-http"],
)
def test_session_cookie_is_secure_over_https_and_behind_a_trusted_proxy(
    client: Client, forwarded: str, base: str, headers: dict[str, str], secure: bool
) -> None:
    c = client(forwarded=forwarded, base=base)
    answer = c.post("/login", data={"token": TOKEN}, headers=headers, follow_redirects=False)
    assert answer.status_code == 303
    assert ("Secure" in answer.headers["set-cookie"]) is secure


def test_logout_forgets_the_session(client: Client) -> None:
    c = signed_in(client)
    assert c.get("/").status_code == 200
    answer = c.post("/logout", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["set-cookie"].startswith(f'{session.COOKIE}=""')
    assert c.get("/").status_code == 401


def test_wrong_form_token_is_refused(client: Client) -> None:
    c = client()
    answer = c.post("/login", data={"token": "wrong"}, follow_redirects=False)
    assert answer.status_code == 401 and "not right" in answer.text
    assert "set-cookie" not in answer.headers
    assert c.post("/login", content=b"x" * 10_000, follow_redirects=False).status_code == 401


def test_session_cookie_is_bound_to_the_token_and_expires() -> None:
    cookie = session.issue(TOKEN, now=1_000_000)
    assert session.valid(cookie, TOKEN, now=1_000_001)
    assert not session.valid(cookie, "another-token", now=1_000_001)  # a new token signs out
    assert not session.valid(cookie, TOKEN, now=1_000_000 + session.MAX_AGE + 1)
    expires, _, signature = cookie.partition(".")
    assert not session.valid(f"{int(expires) + 10**6}.{signature}", TOKEN, now=1_000_001)
    assert not session.valid(TOKEN, TOKEN) and not session.valid("", TOKEN)


@pytest.mark.parametrize(
    ("query", "cookie", "message"),
    [
        ("", None, "needs the server"),
        ("?token=wrong", None, "not right"),
        ("?token=", None, "not right"),
        ("", "wrong", "needs the server"),
        ("", TOKEN, "needs the server"),  # the raw token is not a session
    ],
    ids=["nothing", "wrong-token", "empty-token", "wrong-cookie", "raw-token-cookie"],
)
def test_without_the_token_a_login_form_and_401(
    sqlite_url: str, client: Client, query: str, cookie: str | None, message: str
) -> None:
    seeded(sqlite_url)
    c = client()
    if cookie is not None:
        c.cookies.set(session.COOKIE, cookie)
    answer = c.get(f"/{query}", follow_redirects=False)
    assert answer.status_code == 401
    assert "set-cookie" not in answer.headers
    assert message in answer.text
    assert '<form class="login" method="post" action="/login">' in answer.text
    assert 'name="token"' in answer.text
    assert "Garden birds" not in answer.text


def test_bearer_header_opens_the_page(client: Client) -> None:
    c = client()
    assert c.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_open_when_no_token_is_set(sqlite_url: str, client: Client) -> None:
    seeded(sqlite_url)
    answer = client(token="").get("/")
    assert answer.status_code == 200
    assert "Garden birds" in answer.text


def test_empty_database_says_how_to_start(client: Client) -> None:
    answer = client(token="").get("/")
    assert answer.status_code == 200
    assert "No projects yet" in answer.text
    assert "<svg" not in answer.text
    assert 'http-equiv="refresh"' not in answer.text


def test_hostile_strings_are_escaped_and_scripts_forbidden(sqlite_url: str, client: Client) -> None:
    seeded(sqlite_url, title=HOSTILE, classes=("robin", f"{HOSTILE}-bird", '"><b>x'))
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        labels.set_task_image(conn, 17, image_hash=None, error=f"download failed: {HOSTILE}")
    engine.dispose()
    answer = client(token="").get("/")
    assert answer.status_code == 200
    html = answer.text
    assert "<script" not in html
    assert '"><b>x' not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;-bird" in html
    csp = answer.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert answer.headers["cache-control"] == "no-store"


def test_active_version_without_metrics_or_cross_validated() -> None:
    version = {"version": "labelloop-v1", "trained_on": 4, "promotion": "first version"}
    unevaluated = page_html._active({**version, "metrics": None})
    assert "not evaluated" in unevaluated and "n/a" in unevaluated
    five_fold = {"accuracy": 0.75, "macro_f1": 0.7, "scheme": "5-fold", "n_holdout": 12}
    cross_validated = page_html._active({**version, "metrics": five_fold})
    assert "75.0%" in cross_validated and "by 5-fold cross-validation" in cross_validated


def test_the_page_names_the_trained_tags_and_their_figures() -> None:
    tags = [
        {"name": "parity", "choices": ["odd", "even"], "multiple": False},
        {"name": "tags", "choices": ["even", "loop"], "multiple": True},
    ]
    targets = {
        "parity": {"multiple": False, "accuracy": 0.9, "macro_f1": 0.88, "n_holdout": 40},
        "tags": {"multiple": True, "micro_f1": 0.81, "macro_f1": 0.8, "subset_accuracy": 0.6,
                 "n_holdout": 40},
    }  # fmt: skip
    shown = page_targets.tags_html(
        {"trained_tags": tags, "active_model": {"metrics": {"targets": targets}}}
    )
    assert "Trained tags: <code>parity</code>" in shown and "<code>tags</code>" in shown
    assert "multiple choice" in shown and "81.0%" in shown and "60.0%" in shown
    classic = page_targets.tags_html({"trained_tags": tags[:1], "active_model": None})
    assert "<code>parity</code>" in classic and "<table>" not in classic
    assert page_targets.tags_html({"trained_tags": []}) == ""


def test_classes_follow_the_label_config_and_the_label_budget_shows_the_gains(
    sqlite_url: str, client: Client
) -> None:
    """Issue 16: ten classes, three versions. The head stores its classes alphabetically
    (Eight, Five, Four, ...); the page lists them as the label config does, draws the confusion
    matrix in a box that scrolls rather than overflowing its card, and ranks the classes by
    what the last labels gained them."""
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        status_seed.seed_digits(conn)
    engine.dispose()
    html = client(token="").get("/").text
    recall = html[html.index("<h3>Recall per class</h3>") : html.index("<h3>Confusion matrix")]
    rows = [recall.index(f"<td>{name}</td>") for name in status_seed.DIGIT_CLASSES]
    assert rows == sorted(rows)
    confusion = html[html.index('<div class="scroll"><table class="confusion">') :]
    confusion = confusion[: confusion.index("</table>")]
    header = [confusion.index(f'<th scope="col">{n}</th>') for n in status_seed.DIGIT_CLASSES]
    assert header == sorted(header)
    # Rows move with their class: Eight's nine right answers sit on the diagonal, its miss
    # under Five (alphabetically next, where the seed sends misses).
    eight = confusion[confusion.index('<th scope="row">Eight</th>') :]
    eight = eight[: eight.index("</tr>")]
    cells = [c.split(">", 1)[1].split("<", 1)[0] for c in eight.split("<td")[1:]]
    assert cells == ["0", "0", "0", "0", "0", "1", "0", "0", "9", "0"]

    budget = html[html.index("<h3>Label budget") :]
    budget = budget[: budget.index("</table>")]
    assert "labelloop-v3" in html[html.index("<h3>Label budget") :]
    order = [budget.index(name) for name in ("Eight ▲", "Five", "Three", "Two")]
    assert order == sorted(order)  # largest F1 gain first
    eight_row = budget[budget.index("Eight ▲") :]
    eight_row = eight_row[: eight_row.index("</tr>")]
    assert "60" in eight_row and "(+40)" in eight_row and "+28.1 pts" in eight_row
    assert "53% → 67% → 95%" in eight_row


def test_in_order_permutes_labels_and_confusion_together() -> None:
    metrics = {"labels": ["b", "a", "c"], "confusion": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}
    ordered = page_html.in_order(metrics, ["a", "b", "z"])
    assert ordered["labels"] == ["a", "b", "c"]  # c: no longer in the config, last
    assert ordered["confusion"] == [[5, 4, 6], [2, 1, 3], [8, 7, 9]]
    assert page_html.in_order(metrics, ["b", "a", "c"]) is metrics
    assert page_html.in_order({}, ["a"]) == {}


def test_label_budget_needs_two_evaluated_versions_and_says_unknown_counts() -> None:
    def version(name: str, f1: dict[str, float]) -> dict[str, object]:
        per_class = {c: {"f1": v, "recall": v} for c, v in f1.items()}
        return {"version": name, "metrics": {"per_class": per_class}}

    v1 = version("v1", {"cat": 0.5, "dog": 0.6})
    v2 = version("v2", {"cat": 0.5, "dog": 0.9})
    assert page_budget.gains([v1], {}, ["cat", "dog"]) is None
    assert "second evaluated version" in page_budget.section([v1], {}, ["cat", "dog"])
    found = page_budget.gains([v2, v1, {"version": "v0", "metrics": None}], {}, ["cat", "dog"])
    assert found is not None
    rows, older, newer = found
    assert (older, newer) == ("v1", "v2")
    assert [g.label for g in rows] == ["dog", "cat"]
    assert rows[0].change == pytest.approx(0.3) and rows[0].added is None
    html = page_budget.section([v2, v1], {"v1": {"dog": 3}, "v2": {"dog": 5}}, ["cat", "dog"])
    assert "(+2)" in html and "n/a" not in html.split("cat")[1].split("</tr>")[0]
