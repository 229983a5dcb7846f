"""Decode and preprocess images on a pool of threads, bounded by the bytes they hold.

Pillow releases the GIL while it decodes and resizes, so threads decode in parallel with each
other and with torch's forward pass. Each image's cost is judged from its header
(`EncodedImage.decoded_bytes`) before its pixels exist; decodes start while the pixels held
stay within the budget, and an image larger than the whole budget decodes alone.
"""

import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator

import torch

from service.vision.images import DRAFT_FACTOR, ImageError, open_image, preprocess


class Decoder:
    """Decodes and preprocesses on a pool, holding at most `budget` bytes of decoded pixels
    (judged from each header); an image over the budget decodes when nothing else does."""

    def __init__(
        self,
        pool: concurrent.futures.ThreadPoolExecutor,
        size: int,
        max_pixels: int,
        budget: int,
    ) -> None:
        self._pool = pool
        self._size = size
        self._max_pixels = max_pixels
        self._budget = budget
        self._held = 0
        self._changed = threading.Condition()

    def submit(self, data: bytes) -> "concurrent.futures.Future[torch.Tensor | str]":
        """The future model input of `data` (`DRAFT_FACTOR` reduced-scale decoding), or the
        reason there is none ("not decodable: ...")."""
        return self._pool.submit(self._decode, data)

    def _decode(self, data: bytes) -> torch.Tensor | str:
        try:
            encoded = open_image(data, max_pixels=self._max_pixels)
            min_side = DRAFT_FACTOR * self._size
            with self._holding(encoded.decoded_bytes(min_side)):
                return preprocess(encoded.decode(min_side), self._size)
        except ImageError as exc:
            return f"not decodable: {exc.reason}"
        except StopIteration as exc:  # would leave an asyncio future waiting on it forever
            raise RuntimeError(f"decoding stopped: {exc!r}") from exc

    @contextlib.contextmanager
    def _holding(self, cost: int) -> Iterator[None]:
        with self._changed:
            # Never waits forever: every holder is a decode that is running, and ends.
            self._changed.wait_for(lambda: not self._held or self._held + cost <= self._budget)
            self._held += cost
        try:
            yield
        finally:
            with self._changed:
                self._held -= cost
                self._changed.notify_all()


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count for the forward passes inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
