"""GET /: the status page, one server-rendered HTML document (no scripts, nothing fetched).

When ``server.api_token`` is set the page asks for it once: the sign-in form POSTs it to
``/login``, which sets a signed session cookie (``service.web.session``: not the token itself)
and redirects to ``/``; ``POST /logout`` clears it. Scripts may still send a Bearer header, or
``/?token=...``, which signs in the same way and redirects to ``/`` so the token leaves the
address bar and the history. Without either the answer is the sign-in form with 401. With an
empty token the page is open. The HTML itself is made by ``service.web.page_html``.
"""

import hmac
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from service.context import Services
from service.web import page_budget, page_html, session, status
from service.web.auth import bearer_allowed
from storage import labels, models
from storage import suspects as suspects_store
from storage.db import reading

HEADERS = {
    "Cache-Control": "no-store",
    # No script may run, whatever a project title or an error message contains.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


async def status_page(request: Request) -> Response:
    """The status of every project; asks for the API token first when one is set."""
    services: Services = request.app.state.services
    token = services.settings.server.api_token
    if token:
        given = request.query_params.get("token")
        if given is not None:
            return _signed_in(request, services, given)
        signed = session.valid(request.cookies.get(session.COOKIE), token)
        if not signed and not bearer_allowed(request, token):
            return _login("")
    projects = await run_in_threadpool(gather, services)
    html = page_html.render(projects, now=datetime.now(UTC), sign_out=bool(token))
    return HTMLResponse(html, headers=HEADERS)


async def login(request: Request) -> Response:
    """POST /login: the sign-in form's token; right, a session cookie and back to ``/``."""
    services: Services = request.app.state.services
    return _signed_in(request, services, await session.form_token(request))


async def logout(request: Request) -> Response:
    """POST /logout: forget this browser's session."""
    services: Services = request.app.state.services
    answer = RedirectResponse("/", status_code=303, headers=HEADERS)
    session.sign_out(answer, request, services.settings.server.forwarded_allow_ips)
    return answer


def _signed_in(request: Request, services: Services, given: str | None) -> Response:
    token = services.settings.server.api_token
    if not token:
        return RedirectResponse("/", status_code=303, headers=HEADERS)
    if not _same(given, token):
        return _login("That token is not right.")
    answer = RedirectResponse("/", status_code=303, headers=HEADERS)
    session.sign_in(answer, request, token, services.settings.server.forwarded_allow_ips)
    return answer


def gather(services: Services) -> list[dict[str, Any]]:
    """Every project's status (``service.web.status``) with its versions, threshold and the
    label counts of its newest versions (the label budget)."""
    with reading(services.engine) as conn:
        projects = []
        for project in labels.list_projects(conn):
            body = status.project_status(conn, project.id)
            if body is None:  # deleted between the two reads
                continue
            versions = models.listing(conn, project.id)
            body["versions"] = [status.version_summary(row) for row in versions]
            body["threshold"] = services.settings.training_for(project.id).threshold
            body["label_studio_url"] = services.settings.label_studio.url
            if versions:  # the review section: reviewed by the head version that made them
                body["suspects"] = suspects_store.listing(conn, project.id)
                body["annotators"] = suspects_store.annotator_rates(conn, project.id)
            body["label_counts"] = models.label_counts(conn, project.id, page_budget.VERSIONS)
            projects.append(body)
        return projects


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _login(message: str) -> HTMLResponse:
    headers = {**HEADERS, "WWW-Authenticate": "Bearer"}
    return HTMLResponse(page_html.login(message), status_code=401, headers=headers)
