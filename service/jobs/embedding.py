"""Make sure every task has a backbone embedding, paying a forward pass only for new images.

Per task: a known image hash with a cached vector costs nothing, as long as the task's image URI
is still the one that hash was fetched from (a changed URI is a new picture); otherwise the image is
downloaded (concurrently), hashed, looked up again (the same picture in another task), and only
then decoded and embedded in batches on a worker thread. A task whose image cannot be fetched or
decoded is recorded with the reason and skipped; it never fails the job.
"""

import asyncio
import gc
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from service.context import Services
from service.labelstudio.errors import ImageDownloadError
from service.vision.backbone import Backbone, BackboneSpec, resolve_device
from service.vision.image_store import ImageStore
from service.vision.images import ImageError, content_hash, decode_image, preprocess
from storage import embeddings, labels

logger = logging.getLogger(__name__)

DOWNLOAD_CONCURRENCY = 8
CHUNK = 64  # images decoded and embedded per round trip to the database
MAX_IMAGE_BYTES = 50 * 2**20
KEEP_BACKBONES = 2  # the active version's and one candidate's (see Embedder)


@dataclass
class EmbedReport:
    vectors: dict[int, torch.Tensor] = field(default_factory=dict)  # task id -> (dim,)
    cached: int = 0  # vector found without downloading the image
    embedded: int = 0  # image downloaded, vector cached or computed
    failed: int = 0
    forward_passes: int = 0


class Embedder:
    """Owns the loaded backbones: at most `KEEP_BACKBONES`, the most recently used.

    What a process embeds with is the base backbone of `[training]` (head candidates, their
    pushes) and the active version's (a push, /predict; a fine-tuned one after a promotion).
    Kept by recent use, the two are the active and the one candidate; a third (a version
    activated in between, a settings change) evicts the one used longest ago, and its memory
    (the GPU's too) is freed instead of staying for the life of the worker.
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self._backbones: OrderedDict[str, Backbone] = OrderedDict()

    def backbone(self, spec: BackboneSpec, device: str) -> Backbone:
        key = f"{spec.identity()}@{device}"
        if key in self._backbones:
            self._backbones.move_to_end(key)
            return self._backbones[key]
        while len(self._backbones) >= KEEP_BACKBONES:
            _, evicted = self._backbones.popitem(last=False)
            where = evicted.device
            del evicted  # the last reference: its tensors can go
            _free(where)
        self._backbones[key] = Backbone(spec, resolve_device(device))
        return self._backbones[key]

    async def embed_tasks(
        self,
        tasks: Sequence[Any],
        image_key: str,
        spec: BackboneSpec,
        device: str,
        progress: Callable[[int, int], None],
    ) -> EmbedReport:
        identity = spec.identity()
        report = EmbedReport()
        fetched_before = {t.id: t.image_hash for t in tasks if _still_valid(t, image_key)}
        known = await self._db(embeddings.get_many, fetched_before.values(), identity)
        missing = []
        for task in tasks:
            if fetched_before.get(task.id) in known:
                report.vectors[task.id] = _vector(known[task.image_hash])
                report.cached += 1
            else:
                missing.append(task)
        progress(report.cached, len(tasks))
        semaphore = asyncio.Semaphore(DOWNLOAD_CONCURRENCY)
        for start in range(0, len(missing), CHUNK):
            chunk = missing[start : start + CHUNK]
            fetched = await asyncio.gather(
                *(self._fetch(task, image_key, semaphore) for task in chunk)
            )
            await asyncio.to_thread(
                self._embed_chunk, chunk, fetched, image_key, spec, device, report
            )
            progress(report.cached + report.embedded + report.failed, len(tasks))
        return report

    async def load_images(
        self,
        tasks: Sequence[Any],
        image_key: str,
        store: ImageStore,
        progress: Callable[[int, int], None],
    ) -> dict[int, int]:
        """Preprocessed images of ``tasks`` written into ``store`` (fine-tuning needs pixels,
        not embeddings), a chunk at a time: memory holds one chunk, the store the rest.
        Returns each task's row; a task whose image fails is recorded with the reason and
        left out."""
        semaphore = asyncio.Semaphore(DOWNLOAD_CONCURRENCY)
        rows: dict[int, int] = {}
        for start in range(0, len(tasks), CHUNK):
            chunk = tasks[start : start + CHUNK]
            fetched = await asyncio.gather(
                *(self._fetch(task, image_key, semaphore) for task in chunk)
            )
            decoded = await asyncio.to_thread(_decode_all, fetched, store.size)
            del fetched
            errors = {t.id: d for t, d in zip(chunk, decoded, strict=True) if isinstance(d, str)}
            good = [
                (t.id, d) for t, d in zip(chunk, decoded, strict=True) if not isinstance(d, str)
            ]
            del decoded
            rows.update(await asyncio.to_thread(_store_all, store, good))
            del good
            if errors:
                await self._db(_record_errors, errors)
            progress(start + len(chunk), len(tasks))
        return rows

    async def _fetch(self, task: Any, image_key: str, semaphore: asyncio.Semaphore) -> bytes | str:
        """The image bytes, or the reason they could not be had."""
        uri = image_uri(task, image_key)
        if uri is None:
            return f"task data has no {image_key!r} image"
        async with semaphore:
            try:
                return await self.services.label_studio.download_image(
                    uri, task_id=task.id, max_bytes=MAX_IMAGE_BYTES
                )
            except ImageDownloadError as exc:
                self.services.metrics.label_studio_error(exc)
                return f"download failed: {exc.reason}"

    def _embed_chunk(
        self,
        chunk: Sequence[Any],
        fetched: Sequence[bytes | str],
        image_key: str,
        spec: BackboneSpec,
        device: str,
        report: EmbedReport,
    ) -> None:
        identity = spec.identity()
        hashes: dict[int, str] = {}
        errors: dict[int, str] = {}
        for task, data in zip(chunk, fetched, strict=True):
            if isinstance(data, str):
                errors[task.id] = data
            else:
                hashes[task.id] = content_hash(data)
        with self.services.engine.begin() as conn:
            cached = embeddings.get_many(conn, hashes.values(), identity)
        pending: dict[str, torch.Tensor] = {}
        for task, data in zip(chunk, fetched, strict=True):
            digest = hashes.get(task.id)
            if digest is None or digest in cached or digest in pending:
                continue
            image = _decode(data, spec.image_size)
            if isinstance(image, str):
                errors[task.id] = image
            else:
                pending[digest] = image
        new: dict[str, bytes] = {}
        if pending:
            backbone = self.backbone(spec, device)
            vectors = backbone.embed(list(pending.values()))
            new = {h: _bytes(v) for h, v in zip(pending, vectors, strict=True)}
            report.forward_passes += len(new)
        with self.services.engine.begin() as conn:
            embeddings.put_many(conn, new, identity, next(iter(_dims(new)), 0))
            for task in chunk:
                digest = hashes.get(task.id)
                ok = digest is not None and task.id not in errors
                labels.set_task_image(
                    conn,
                    task.id,
                    image_hash=digest if ok else None,
                    error=errors.get(task.id),
                    uri=image_uri(task, image_key),
                )
        for task in chunk:
            if task.id in errors:
                report.failed += 1
                logger.info("task %d skipped: %s", task.id, errors[task.id])
                continue
            digest = hashes[task.id]
            report.vectors[task.id] = _vector(cached.get(digest) or new[digest])
            report.embedded += 1

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            with self.services.engine.begin() as conn:
                return fn(conn, *args)

        return await asyncio.to_thread(run)


def _free(device: torch.device) -> None:
    """Let an evicted backbone's memory go now (on a GPU, back to the device)."""
    gc.collect()  # a module's parameters can sit in reference cycles
    if device.type == "cuda":
        torch.cuda.empty_cache()


def image_uri(task: Any, image_key: str) -> str | None:
    """The image URI in a task's data (what identifies its picture), or None."""
    uri = task.data.get(image_key) if isinstance(task.data, dict) else None
    return uri if isinstance(uri, str) and uri else None


def _still_valid(task: Any, image_key: str) -> bool:
    """Whether the task's stored image hash is of the picture its data names now."""
    return bool(task.image_hash) and task.image_uri == image_uri(task, image_key)


def _decode(data: bytes | str, size: int) -> torch.Tensor | str:
    """A preprocessed image, or the reason there is none."""
    if isinstance(data, str):
        return data
    try:
        return preprocess(decode_image(data), size)
    except ImageError as exc:
        return f"not decodable: {exc.reason}"


def _decode_all(fetched: Sequence[bytes | str], size: int) -> list[torch.Tensor | str]:
    return [_decode(data, size) for data in fetched]


def _store_all(store: ImageStore, images: Sequence[tuple[int, torch.Tensor]]) -> dict[int, int]:
    return {task_id: store.append(image) for task_id, image in images}


def _record_errors(conn: Any, errors: dict[int, str]) -> None:
    for task_id, error in errors.items():
        labels.set_task_image(conn, task_id, image_hash=None, error=error)


def _bytes(vector: torch.Tensor) -> bytes:
    return vector.detach().to(torch.float32).contiguous().numpy().tobytes()


def _vector(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.float32)


def _dims(vectors: dict[str, bytes]) -> list[int]:
    return [len(v) // 4 for v in vectors.values()]
