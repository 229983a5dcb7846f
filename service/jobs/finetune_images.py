"""Pixels for a fine-tune: each labeled task's preprocessed image, written into the job's
``ImageStore`` a chunk at a time (memory holds one chunk, the store on disk the rest).

Downloads go through the embedder's ``fetch`` (the same image fetch policy, size cap and
error reasons as embedding); a task whose image fails is recorded with the reason and left out.
"""

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import torch

from service.jobs.embedding import CHUNK, DOWNLOAD_CONCURRENCY, Embedder
from service.vision.image_store import ImageStore
from service.vision.images import DEFAULT_MAX_PIXELS, ImageError, model_input
from storage import labels


async def load_images(
    embedder: Embedder,
    tasks: Sequence[Any],
    image_key: str,
    store: ImageStore,
    progress: Callable[[int, int], None],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[int, int]:
    """Each loaded task's row in ``store``."""
    semaphore = asyncio.Semaphore(DOWNLOAD_CONCURRENCY)
    rows: dict[int, int] = {}
    for start in range(0, len(tasks), CHUNK):
        chunk = tasks[start : start + CHUNK]
        fetched = await asyncio.gather(
            *(embedder.fetch(task, image_key, semaphore) for task in chunk)
        )
        decoded = await asyncio.to_thread(_decode_all, fetched, store.size, max_pixels)
        del fetched
        errors = {t.id: d for t, d in zip(chunk, decoded, strict=True) if isinstance(d, str)}
        good = [(t.id, d) for t, d in zip(chunk, decoded, strict=True) if not isinstance(d, str)]
        del decoded
        rows.update(await asyncio.to_thread(_store_all, store, good))
        del good
        if errors:
            await asyncio.to_thread(_record_errors, embedder, errors)
        progress(start + len(chunk), len(tasks))
    return rows


def _decode(data: bytes | str, size: int, max_pixels: int) -> torch.Tensor | str:
    """A preprocessed image, or the reason there is none."""
    if isinstance(data, str):
        return data
    try:
        return model_input(data, size, max_pixels=max_pixels)
    except ImageError as exc:
        return f"not decodable: {exc.reason}"


def _decode_all(
    fetched: Sequence[bytes | str], size: int, max_pixels: int
) -> list[torch.Tensor | str]:
    return [_decode(data, size, max_pixels) for data in fetched]


def _store_all(store: ImageStore, images: Sequence[tuple[int, torch.Tensor]]) -> dict[int, int]:
    return {task_id: store.append(image) for task_id, image in images}


def _record_errors(embedder: Embedder, errors: dict[int, str]) -> None:
    with embedder.services.engine.begin() as conn:
        for task_id, error in errors.items():
            labels.set_task_image(conn, task_id, image_hash=None, error=error)
