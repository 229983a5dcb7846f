"""GET /: the status page, one server-rendered HTML document (no scripts, nothing fetched).

When ``server.api_token`` is set the page asks for it once: ``/?token=...`` with the right token
stores it in an HttpOnly, SameSite=Strict cookie and redirects to ``/``; without that cookie (or
a Bearer header) the answer is a small sign-in form with 401. With an empty token it is open.
The HTML itself is made by ``service.web.page_html``.
"""

import hmac
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from service.context import Services
from service.web import page_html, status
from service.web.auth import bearer_allowed
from storage import labels, models
from storage.db import reading

COOKIE = "labelloop_token"
COOKIE_MAX_AGE = 30 * 24 * 3600
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
            if not _same(given, token):
                return _login("That token is not right.")
            answer = RedirectResponse("/", status_code=303, headers=HEADERS)
            answer.set_cookie(
                COOKIE,
                token,
                max_age=COOKIE_MAX_AGE,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return answer
        if not _same(request.cookies.get(COOKIE), token) and not bearer_allowed(request, token):
            return _login("")
    projects = await run_in_threadpool(gather, services)
    html = page_html.render(projects, now=datetime.now(UTC))
    return HTMLResponse(html, headers=HEADERS)


def gather(services: Services) -> list[dict[str, Any]]:
    """Every project's status (``service.web.status``) with its versions and threshold."""
    with reading(services.engine) as conn:
        projects = []
        for project in labels.list_projects(conn):
            body = status.project_status(conn, project.id)
            if body is None:  # deleted between the two reads
                continue
            versions = models.listing(conn, project.id)
            body["versions"] = [status.version_summary(row) for row in versions]
            body["threshold"] = services.settings.training_for(project.id).threshold
            projects.append(body)
        return projects


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _login(message: str) -> HTMLResponse:
    headers = {**HEADERS, "WWW-Authenticate": "Bearer"}
    return HTMLResponse(page_html.login(message), status_code=401, headers=headers)
