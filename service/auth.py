"""Shared-secret checks for the webhook and the control API (constant-time compares)."""

import hmac

from starlette.requests import Request

SECRET_HEADER = "X-Labelloop-Secret"


def matches(given: str | None, expected: str) -> bool:
    """True when ``expected`` is empty (open) or ``given`` equals it, in constant time."""
    if not expected:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def webhook_allowed(request: Request, secret: str) -> bool:
    return matches(request.headers.get(SECRET_HEADER), secret)


def bearer_allowed(request: Request, token: str) -> bool:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    given = credentials.strip() if scheme.lower() == "bearer" else None
    return matches(given, token)
