"""The Label Studio client's errors, one root::

    LabelStudioError
     ├── LabelStudioHTTPError     a 4xx answer (never retried) or another final error answer
     ├── LabelStudioUnavailable   connect errors, timeouts or 5xx outlasted the retries
     ├── WebhookRefused           Label Studio's SSRF protection refused the webhook URL
     └── ImageDownloadError       an image could not be fetched (``reason`` says why)

No secret (API key, access token, webhook header values) goes into an exception's message.
"""


class LabelStudioError(Exception):
    """Root of the Label Studio client's errors."""


class LabelStudioHTTPError(LabelStudioError):
    """Label Studio answered with an error status that is not worth retrying."""

    def __init__(self, status_code: int, detail: str, where: str = "") -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"{where} -> {status_code}: {detail}" if where else detail)


class LabelStudioUnavailable(LabelStudioError):
    """Transient failures (connect errors, timeouts, 5xx) outlasted the retries."""


class WebhookRefused(LabelStudioError):
    """Label Studio refused to save the webhook because of its SSRF protection."""


class ImageDownloadError(LabelStudioError):
    """An image could not be downloaded; ``reason`` is short and safe to show."""

    def __init__(self, reason: str, where: str = "") -> None:
        self.reason = reason
        super().__init__(f"cannot download {where}: {reason}" if where else reason)


class Unsendable(LabelStudioError):
    """The request cannot succeed however often it is sent (bad scheme, redirect loop)."""
