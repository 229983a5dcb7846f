"""Secrets out of every log line: signed URLs' signatures, tokens, the configured secrets.

Applied where a log line is finally written (``service.logs``' formatters), so it covers
third-party loggers too (httpx, httpcore, uvicorn) and exception tracebacks. Three rules:

- in a URL's query string, the value of every parameter whose name says it is a credential
  (S3's ``X-Amz-Signature``/``X-Amz-Credential``/``X-Amz-Security-Token``, GCS's
  ``X-Goog-Signature``, Azure SAS's ``sig``, ``token``, ``api_key``, ... ) becomes ``REDACTED``;
- an ``Authorization``-style credential (``Token x``, ``Bearer x``, ``Basic x``) and anything
  shaped like a JWT (personal access tokens and their access tokens) is replaced;
- the secrets labelloop is configured with (API key, API token, webhook secret, metrics token)
  are replaced wherever they appear.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "REDACTED"

# Query parameter names that carry a credential. Matched as a whole name, case-insensitively;
# the second alternation catches names that merely contain such a word (``X-Amz-Signature``,
# ``access_token``, ``SharedAccessSignature``).
_SECRET_PARAM = re.compile(
    r"(?ix)^(?: sig | key | key-pair-id | awsaccesskeyid | googleaccessid"
    r" | .*(?:signature|credential|token|secret|password|passwd|api[-_]?key|auth|session).* )$"
)
_QUERY = re.compile(r"(?P<sep>[?&])(?P<name>[^=&\s\"'<>#]+)=(?P<value>[^&\s\"'<>#]*)")
# Header-style credentials: the schemes as HTTP spells them, then a credential-sized word.
_AUTH_HEADER = re.compile(
    r"\b(?P<scheme>Token|Bearer|Basic|bearer|basic)(?P<gap>\s+|%20|\+)"
    r"(?P<cred>[A-Za-z0-9._~+/=-]{16,})"
)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


class Redactor:
    """Rewrites text so that no secret it knows of, or recognises, survives."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole. Very short
        # values are not secrets worth matching (they would mangle ordinary words).
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if "=" in text:
            text = _QUERY.sub(_masked_param, text)
        text = _AUTH_HEADER.sub(lambda m: f"{m['scheme']}{m['gap']}{MASK}", text)
        text = _JWT.sub(MASK, text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def _masked_param(match: re.Match[str]) -> str:
    if not match["value"] or not _SECRET_PARAM.match(match["name"]):
        return match[0]
    return f"{match['sep']}{match['name']}={MASK}"
