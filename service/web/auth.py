"""Shared-secret checks for the webhook and the control API (constant-time compares)."""

import base64
import binascii
import hmac

from starlette.requests import Request

SECRET_HEADER = "X-Labelloop-Secret"


def matches(given: str | None, expected: str) -> bool:
    """True when ``expected`` is empty (open) or ``given`` equals it, in constant time."""
    if not expected:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def webhook_allowed(request: Request, secret: str, api_token: str) -> bool:
    """The shared secret header, or (for Label Studio's ML-backend connection, which sends its
    Basic credentials instead) the API token."""
    if matches(request.headers.get(SECRET_HEADER), secret):
        return True
    return bool(api_token) and basic_or_bearer_allowed(request, api_token)


def bearer_allowed(request: Request, token: str) -> bool:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    given = credentials.strip() if scheme.lower() == "bearer" else None
    return matches(given, token)


def basic_or_bearer_allowed(request: Request, token: str) -> bool:
    """The control token as a Bearer token, or as the password of Basic auth (what Label
    Studio sends for an ML backend connected with "Basic auth")."""
    if bearer_allowed(request, token):
        return True
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    _, _, password = decoded.partition(":")
    return matches(password, token)
