"""Preprocessed images of one job on disk: written once, read back a batch at a time.

Fine-tuning reads every labeled image once per epoch. Kept decoded in memory that is
3 x S x S float32 per image (10,000 labels at 224 px: 6 GB); here each image is written once to
a file in a temporary folder of its own and read back by rows, so memory holds one batch.

Stored as 8 bits per channel: `preprocess` makes its floats from 8-bit pixels
(``(u / 255 - mean) / std``), so the pixel ``u`` is recovered exactly by inverting that, and the
same operations rebuild the very same float32 values (the fine-tune sees what it saw when the
images were in memory) from a quarter of the bytes (float16 would be half again as large and
not exact). An image that is not 8-bit pixels normalised that way is refused, not rounded.

Reads and writes go through the file (``pread``/``pwrite``), not a memory map: the pages stay in
the kernel's cache, which it reclaims, instead of counting as the worker's resident memory.
`close` (or leaving the ``with`` block) deletes the folder; a fine-tune still reading from a
daemon thread after its job was cancelled gets an error instead of someone else's file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import torch

from service.vision.images import IMAGENET_MEAN, IMAGENET_STD

_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
# How far the recovered 0..255 value of a stored image may be from a whole number.
_PIXEL_TOLERANCE = 0.01


class ImageStore:
    """Up to ``capacity`` preprocessed (3, size, size) images, by row, in a temporary file."""

    def __init__(self, capacity: int, size: int, *, directory: str | None = None) -> None:
        if capacity < 0 or size < 1:
            raise ValueError(f"need capacity >= 0 and size >= 1, got {capacity}, {size}")
        self.size = size
        self.capacity = capacity
        self._item = 3 * size * size
        self._lock = threading.Lock()
        self.folder = Path(tempfile.mkdtemp(prefix="labelloop-images-", dir=directory))
        self._fd: int | None = os.open(self.folder / "images.u8", os.O_RDWR | os.O_CREAT, 0o600)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def append(self, image: torch.Tensor) -> int:
        """Store one `preprocess` output; returns its row."""
        if image.shape != (3, self.size, self.size):
            raise ValueError(
                f"image has shape {tuple(image.shape)}, expected (3, {self.size}, {self.size})"
            )
        pixels = quantize(image.unsqueeze(0))
        with self._lock:
            fd = self._open_fd()
            if self._count >= self.capacity:
                raise ValueError(f"the store is full ({self.capacity} images)")
            row = self._count
            os.pwrite(fd, pixels.numpy().tobytes(), row * self._item)
            self._count += 1
        return row

    def take(self, rows: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """The images of ``rows`` as one (n, 3, size, size) float32 batch, as they were given."""
        indices = rows.tolist() if isinstance(rows, torch.Tensor) else list(rows)
        out = torch.empty((len(indices), 3, self.size, self.size), dtype=torch.uint8)
        view = out.numpy().data.cast("B")
        with self._lock:
            fd = self._open_fd()
            for position, row in enumerate(indices):
                if not 0 <= row < self._count:
                    raise IndexError(f"row {row} of a store of {self._count} images")
                part = view[position * self._item : (position + 1) * self._item]
                if os.preadv(fd, [part], row * self._item) != self._item:
                    raise OSError(f"short read of row {row} from {self.folder}")
        return dequantize(out)

    def rows(self, rows: Sequence[int]) -> ImageRows:
        """These rows, in this order, read like a store of their own."""
        return ImageRows(self, rows)

    def close(self) -> None:
        """Delete the file and its folder; safe to call twice, and while a reader waits."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            shutil.rmtree(self.folder, ignore_errors=True)

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError("the image store is closed (its job has ended)")
        return self._fd


class ImageRows:
    """Some rows of a store, renumbered 0..n-1 in the order given."""

    def __init__(self, store: ImageStore, rows: Sequence[int]) -> None:
        self._store = store
        self._rows = list(rows)

    def __len__(self) -> int:
        return len(self._rows)

    def take(self, rows: Sequence[int] | torch.Tensor) -> torch.Tensor:
        indices = rows.tolist() if isinstance(rows, torch.Tensor) else list(rows)
        return self._store.take([self._rows[i] for i in indices])


class StackedImages:
    """Images already in memory, read like a store (tests, benchmarks, small callers)."""

    def __init__(self, images: Sequence[torch.Tensor]) -> None:
        self._images = images

    def __len__(self) -> int:
        return len(self._images)

    def take(self, rows: Sequence[int] | torch.Tensor) -> torch.Tensor:
        indices = rows.tolist() if isinstance(rows, torch.Tensor) else list(rows)
        if not indices:
            size = self._images[0].shape[-1] if len(self._images) else 0
            return torch.empty((0, 3, size, size), dtype=torch.float32)
        return torch.stack([self._images[i] for i in indices])


def quantize(images: torch.Tensor) -> torch.Tensor:
    """(n, 3, S, S) normalised floats -> the 8-bit pixels they were made from."""
    values = (images.to(torch.float32) * _STD + _MEAN) * 255.0
    pixels = values.round()
    if not bool(((values - pixels).abs() <= _PIXEL_TOLERANCE).all()) or not bool(
        ((pixels >= 0) & (pixels <= 255)).all()
    ):
        raise ValueError("not a preprocessed image (8-bit pixels, ImageNet-normalised)")
    return pixels.to(torch.uint8).contiguous()


def dequantize(pixels: torch.Tensor) -> torch.Tensor:
    """The inverse of `quantize`, by the very operations `preprocess` uses."""
    return pixels.to(torch.float32).div_(255.0).sub_(_MEAN).div_(_STD).contiguous()
