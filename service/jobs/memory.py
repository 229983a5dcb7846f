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
import os
from collections.abc import Callable

logger = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h) and the values `serve` and `worker` start with.
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENA_MAX = 2  # the asyncio loop's thread and the job threads share two arenas
MMAP_THRESHOLD = 128 * 1024  # fixed: buffers past it are mapped apart and unmapped when freed


def tune_malloc() -> bool:
    """Bound glibc's malloc before the job threads start (``serve``, ``worker``): at most
    ``ARENA_MAX`` arenas (one per thread, up to 8 per core, otherwise), and a fixed mmap
    threshold, so a decoded photo's or a batch's buffers go back to the system when freed
    instead of raising the dynamic threshold and staying in a heap. Measured with
    bench/photos.py (the stage's peak RSS) and bench/memory.py. The environment's
    ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_``, when set, win. False where there is no
    glibc ``mallopt``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(M_ARENA_MAX, ARENA_MAX)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return True


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
