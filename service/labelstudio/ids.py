"""Label Studio's ids (and labelloop's): non-negative 32-bit integers."""

from typing import Any

MAX_ID = 2**31 - 1


def as_id(value: Any) -> int:
    """A Label Studio id: a non-negative 32-bit integer (or its digits); else ValueError."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return value
    raise ValueError(f"not an id: {value!r:.40}")
