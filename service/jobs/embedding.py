"""Make sure every task has a backbone embedding, paying a forward pass only for new images.

Per task: a known image hash with a cached vector costs nothing, as long as the task's image URI
is still the one that hash was fetched from (a changed URI is a new picture); otherwise the image is
downloaded, hashed, looked up again (the same picture in another task), and only then decoded and
embedded. A task whose image cannot be fetched or decoded is recorded with the reason and skipped;
it never fails the job.

The stage is a pipeline, so that it runs at the speed of its slowest step rather than their sum:
the next chunk downloads (a window of DOWNLOAD_CONCURRENCY) while this one's images decode on a
pool of threads (Pillow releases the GIL) and the decoded ones go through the forward pass in
batches. What is in flight is bounded by bytes, not by count: a chunk closes at CHUNK images or
CHUNK_BYTES of downloaded bytes, at most one chunk waits while another is embedded, and the
decoders hold at most DECODE_BYTES of decoded pixels (one image over it decodes alone). A chunk
is one round trip to the database, as before; results (hashes, errors, cache rows, batches of the
forward pass) are the same as decoding the chunk in turn.
"""

import asyncio
import concurrent.futures
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from service.context import Services
from service.jobs.backbones import BackboneCache
from service.jobs.task_images import image_uri, still_valid
from service.labelstudio.errors import ImageDownloadError
from service.vision.backbone import Backbone, BackboneSpec, resolve_device, thread_plan
from service.vision.decoder import Decoder, torch_threads
from service.vision.images import content_hash
from storage import embeddings, labels

logger = logging.getLogger(__name__)

DOWNLOAD_CONCURRENCY = 8
CHUNK = 64  # images decoded and embedded per round trip to the database
CHUNK_BYTES = 32 * 2**20  # ...or fewer: downloaded bytes a chunk holds (plus its last image's)
DECODE_BYTES = 128 * 2**20  # decoded pixels held by the decoder threads together
MAX_IMAGE_BYTES = 50 * 2**20


@dataclass
class EmbedReport:
    vectors: dict[int, torch.Tensor] = field(default_factory=dict)  # task id -> (dim,)
    cached: int = 0  # vector found without downloading the image
    embedded: int = 0  # image downloaded, vector cached or computed
    failed: int = 0
    forward_passes: int = 0
    # image hash -> a task whose vector above is that image's, for the images embedded in this
    # call: a picture met again in a later chunk (its earlier chunk's write may be under way,
    # so the cache lookup missed it) costs no second forward pass.
    embedded_images: dict[str, int] = field(default_factory=dict)


class Embedder:
    """Embeds tasks' images with the loaded backbones (``service.jobs.backbones``: at most the
    active one and one candidate); ``service.jobs.finetune_images`` loads pixels instead."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._backbones = BackboneCache()

    def backbone(self, spec: BackboneSpec, device: str) -> Backbone:
        return self._backbones.load(spec, device)

    async def embed_tasks(
        self,
        tasks: Sequence[Any],
        image_key: str,
        spec: BackboneSpec,
        device: str,
        progress: Callable[[int, int], None],
        *,
        max_pixels: int,
    ) -> EmbedReport:
        """``max_pixels``: [training] max_image_pixels, what an image may declare."""
        identity = spec.identity()
        report = EmbedReport()
        fetched_before = {t.id: t.image_hash for t in tasks if still_valid(t, image_key)}
        known = await self._db(embeddings.get_many, fetched_before.values(), identity)
        missing = []
        for task in tasks:
            if fetched_before.get(task.id) in known:
                report.vectors[task.id] = _vector(known[task.image_hash])
                report.cached += 1
            else:
                missing.append(task)
        progress(report.cached, len(tasks))
        if not missing:
            return report
        plan = thread_plan(resolve_device(device))
        pool = concurrent.futures.ThreadPoolExecutor(plan.decode, "labelloop-decode")
        decoder = Decoder(pool, spec.image_size, max_pixels, DECODE_BYTES)
        ready: asyncio.Queue[_Chunk | None] = asyncio.Queue(maxsize=1)
        feeder = asyncio.create_task(self._feed(missing, image_key, identity, decoder, ready))
        storing: asyncio.Future[None] | None = None  # the last chunk's write, still under way
        try:
            with torch_threads(plan.torch):
                while (chunk := await _next(ready, feeder)) is not None:
                    storing = await self._embed_chunk(
                        chunk, image_key, spec, device, report, storing
                    )
                    progress(report.cached + report.embedded + report.failed, len(tasks))
            if storing is not None:
                await storing
            await feeder
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
            if storing is not None and not storing.done():  # a write finishes alone
                await asyncio.shield(storing)
            pool.shutdown(wait=False, cancel_futures=True)  # a decode under way finishes alone
        return report

    async def fetch(self, task: Any, image_key: str, semaphore: asyncio.Semaphore) -> bytes | str:
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

    async def _feed(
        self,
        tasks: Sequence[Any],
        image_key: str,
        identity: str,
        decoder: Decoder,
        ready: "asyncio.Queue[_Chunk | None]",
    ) -> None:
        """Download, hash and look up chunk after chunk; start decoding what is not cached."""
        async with contextlib.aclosing(self._download(tasks, image_key)) as downloaded:
            async for chunk, fetched in downloaded:
                found = await asyncio.to_thread(self._lookup, chunk, fetched, identity)
                hashes, errors, cached = found
                pending: dict[str, concurrent.futures.Future[torch.Tensor | str]] = {}
                for task, data in zip(chunk, fetched, strict=True):
                    digest = hashes.get(task.id)
                    if digest is None or digest in cached or digest in pending:
                        continue
                    assert isinstance(data, bytes)
                    pending[digest] = decoder.submit(data)
                del fetched  # the decoders hold what they still need
                await ready.put(_Chunk(chunk, hashes, errors, cached, pending))
        await ready.put(None)

    async def _download(
        self, tasks: Sequence[Any], image_key: str
    ) -> AsyncGenerator[tuple[list[Any], list[bytes | str]], None]:
        """Chunks of (tasks, bytes or reason), in task order, downloading a window ahead."""
        semaphore = asyncio.Semaphore(DOWNLOAD_CONCURRENCY)
        upcoming = iter(tasks)
        window: deque[tuple[Any, asyncio.Task[bytes | str]]] = deque()

        def start_next() -> None:
            task = next(upcoming, None)
            if task is not None:
                fetch = self.fetch(task, image_key, semaphore)
                window.append((task, asyncio.create_task(fetch)))

        for _ in range(DOWNLOAD_CONCURRENCY):
            start_next()
        chunk: list[Any] = []
        fetched: list[bytes | str] = []
        held = 0
        try:
            while window:
                task, download = window.popleft()
                data = await download
                start_next()
                chunk.append(task)
                fetched.append(data)
                held += len(data) if isinstance(data, bytes) else 0
                if len(chunk) == CHUNK or held >= CHUNK_BYTES or not window:
                    yield chunk, fetched
                    chunk, fetched, held = [], [], 0
        finally:
            for _, download in window:
                download.cancel()

    def _lookup(
        self, chunk: Sequence[Any], fetched: Sequence[bytes | str], identity: str
    ) -> tuple[dict[int, str], dict[int, str], dict[str, bytes]]:
        """Per task its image's hash or why there is none; the vectors already cached."""
        hashes: dict[int, str] = {}
        errors: dict[int, str] = {}
        for task, data in zip(chunk, fetched, strict=True):
            if isinstance(data, str):
                errors[task.id] = data
            else:
                hashes[task.id] = content_hash(data)
        with self.services.engine.begin() as conn:
            cached = embeddings.get_many(conn, hashes.values(), identity)
        return hashes, errors, cached

    async def _embed_chunk(
        self,
        chunk: "_Chunk",
        image_key: str,
        spec: BackboneSpec,
        device: str,
        report: EmbedReport,
        storing: "asyncio.Future[None] | None",
    ) -> "asyncio.Future[None]":
        """Forward the chunk's images in batches as they are decoded; report; start storing.

        The write (one transaction; SQLite's commit waits for fsync) runs while the next chunk
        goes through the forward pass: returned, it is awaited before the next chunk's write,
        so writes stay in order, one at a time. Held up by each write, the forward pass idled
        ~14% of a photo job (bench/photos.py under py-spy)."""
        identity = spec.identity()
        new: dict[str, bytes] = {}
        failed: dict[str, str] = {}
        earlier = report.embedded_images
        pending = {h: f for h, f in chunk.pending.items() if h not in earlier}
        if pending:
            backbone = await asyncio.to_thread(self.backbone, spec, device)
            batch: dict[str, torch.Tensor] = {}
            last = next(reversed(pending))
            for digest, decoding in pending.items():
                image = await asyncio.wrap_future(decoding)
                if isinstance(image, str):
                    failed[digest] = image
                else:
                    batch[digest] = image
                if batch and (len(batch) == backbone.batch_size or digest == last):
                    vectors = await asyncio.to_thread(backbone.embed, list(batch.values()))
                    new.update({h: _bytes(v) for h, v in zip(batch, vectors, strict=True)})
                    batch = {}
            report.forward_passes += len(new)
        errors = dict(chunk.errors)
        for task in chunk.tasks:
            hashed = chunk.hashes.get(task.id)
            if hashed in failed:  # every task of that picture: the same reason
                errors[task.id] = failed[hashed]
        if storing is not None:
            await storing  # the previous chunk's write: its failure is this job's
        write = asyncio.ensure_future(
            asyncio.to_thread(self._store, chunk, new, errors, identity, image_key)
        )
        for task in chunk.tasks:
            if task.id in errors:
                report.failed += 1
                logger.info("task %d skipped: %s", task.id, errors[task.id])
                continue
            digest = chunk.hashes[task.id]
            if digest in chunk.cached:
                report.vectors[task.id] = _vector(chunk.cached[digest])
            elif digest in new:
                report.vectors[task.id] = _vector(new[digest])
                earlier.setdefault(digest, task.id)
            else:  # embedded in an earlier chunk of this call
                report.vectors[task.id] = report.vectors[earlier[digest]]
            report.embedded += 1
        return write

    def _store(
        self,
        chunk: "_Chunk",
        new: dict[str, bytes],
        errors: dict[int, str],
        identity: str,
        image_key: str,
    ) -> None:
        with self.services.engine.begin() as conn:
            embeddings.put_many(conn, new, identity, next(iter(_dims(new)), 0))
            for task in chunk.tasks:
                digest = chunk.hashes.get(task.id)
                ok = digest is not None and task.id not in errors
                labels.set_task_image(
                    conn,
                    task.id,
                    image_hash=digest if ok else None,
                    error=errors.get(task.id),
                    uri=image_uri(task, image_key),
                )

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            with self.services.engine.begin() as conn:
                return fn(conn, *args)

        return await asyncio.to_thread(run)


async def _next(
    ready: "asyncio.Queue[_Chunk | None]", feeder: "asyncio.Task[None]"
) -> "_Chunk | None":
    """The next chunk, None after the last; what stopped the feeder, if it failed."""
    getting = asyncio.ensure_future(ready.get())
    await asyncio.wait({getting, feeder}, return_when=asyncio.FIRST_COMPLETED)
    if not getting.done() and not feeder.cancelled() and feeder.exception() is not None:
        getting.cancel()
        feeder.result()  # raises it
    return await getting


@dataclass
class _Chunk:
    """One round trip's tasks on their way from download to the database."""

    tasks: list[Any]
    hashes: dict[int, str]  # task id -> image hash, for the tasks whose image was downloaded
    errors: dict[int, str]  # task id -> why its image could not be downloaded
    cached: dict[str, bytes]  # hash -> vector found in the cache
    pending: dict[str, "concurrent.futures.Future[torch.Tensor | str]"]  # hash -> decoding


def _bytes(vector: torch.Tensor) -> bytes:
    return vector.detach().to(torch.float32).contiguous().numpy().tobytes()


def _vector(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.float32)


def _dims(vectors: dict[str, bytes]) -> list[int]:
    return [len(v) // 4 for v in vectors.values()]
