"""What a worker gives back after each job.

A job's tensors are freed when it ends, but glibc's malloc keeps the pages: freed chunks in the
middle of an arena's heap are never returned to the system by ``free``, torch's large
buffers raise malloc's dynamic mmap threshold so that later ones land in those heaps too, and
every thread that allocates (the embedding and training threads) may get an arena of its own.
``malloc_trim(0)`` walks every arena and hands the free pages back (measured in
bench/memory.py: the difference between RSS after a job and before it).
"""

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


def release_memory() -> None:
    """Collect Python's cycles, then return malloc's free pages to the system (glibc only)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_trim: list[Callable[[int], int] | None] = []


def _malloc_trim() -> Callable[[int], int] | None:
    if not _trim:
        function = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            function = libc.malloc_trim  # absent from musl and macOS
            function.argtypes = [ctypes.c_size_t]
            function.restype = ctypes.c_int
        except (OSError, AttributeError):
            logger.debug("no malloc_trim here; freed memory stays with the allocator")
        _trim.append(function)
    return _trim[0]
