"""The status page's sign-in: a signed session cookie, never the token itself.

The cookie holds an expiry time and an HMAC of it keyed by ``server.api_token``: it proves the
browser was given the token once, without holding it (the token is also the control API's and
the ML backend's password). Changing the token signs every browser out. The cookie is
HttpOnly, SameSite=Strict, and Secure whenever the browser reached labelloop over https,
directly or through a proxy trusted by ``server.forwarded_allow_ips`` that says so in
``X-Forwarded-Proto``.
"""

import base64
import hashlib
import hmac
import time
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from service.settings import trusted_proxies

COOKIE = "labelloop_session"
MAX_AGE = 7 * 24 * 3600
MAX_FORM_BYTES = 4096
_PURPOSE = b"labelloop status page session|"


def _signature(token: str, expires: int) -> str:
    mac = hmac.new(token.encode(), _PURPOSE + str(expires).encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def issue(token: str, now: float | None = None) -> str:
    expires = int(now if now is not None else time.time()) + MAX_AGE
    return f"{expires}.{_signature(token, expires)}"


def valid(cookie: str | None, token: str, now: float | None = None) -> bool:
    """Whether ``cookie`` was issued for ``token`` and has not expired."""
    if not cookie:
        return False
    expires_text, _, signature = cookie.partition(".")
    if not (expires_text.isascii() and expires_text.isdigit()) or len(expires_text) > 12:
        return False
    expires = int(expires_text)
    if expires < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(signature.encode(), _signature(token, expires).encode())


def came_over_https(request: Request, forwarded_allow_ips: str) -> bool:
    """https to labelloop itself, or a trusted proxy's ``X-Forwarded-Proto: https``."""
    if request.url.scheme == "https":
        return True
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    if proto != "https":
        return False
    trusted = trusted_proxies(forwarded_allow_ips)
    client = request.client.host if request.client else ""
    return trusted is None or client in trusted


def sign_in(response: Response, request: Request, token: str, forwarded_allow_ips: str) -> None:
    response.set_cookie(
        COOKIE,
        issue(token),
        max_age=MAX_AGE,
        httponly=True,
        samesite="strict",
        secure=came_over_https(request, forwarded_allow_ips),
    )


def sign_out(response: Response, request: Request, forwarded_allow_ips: str) -> None:
    response.delete_cookie(
        COOKIE,
        httponly=True,
        samesite="strict",
        secure=came_over_https(request, forwarded_allow_ips),
    )


async def form_token(request: Request) -> str | None:
    """The ``token`` field of a small urlencoded form (the sign-in form), or None."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode(), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return None
    values = fields.get("token")
    return values[0] if values else None
