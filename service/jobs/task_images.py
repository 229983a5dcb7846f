"""Which picture a task names: its image URI, read from the task data as Label Studio reads it."""

from typing import Any


def image_uri(task: Any, image_key: str) -> str | None:
    """The image URI in a task's data (what identifies its picture), or None."""
    uri = data_value(task.data, image_key)
    return uri if isinstance(uri, str) and uri else None


def data_value(data: Any, key: str) -> Any:
    """``$key`` in task data, read as Label Studio's editor reads it (lodash ``get``): the key
    itself when the data has it, else a dotted path (``$item.img``: data["item"]["img"];
    ``$pages.0.img``: a list's first item's)."""
    if not isinstance(data, dict):
        return None
    if key in data:
        return data[key]
    value: Any = data
    for part in key.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


def still_valid(task: Any, image_key: str) -> bool:
    """Whether the task's stored image hash is of the picture its data names now."""
    return bool(task.image_hash) and task.image_uri == image_uri(task, image_key)
