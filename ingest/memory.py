"""One process-wide memory setting of the bridge: large buffers always come from ``mmap``.

glibc serves allocations above its mmap threshold with ``mmap`` and gives them back to the system when
freed, but it raises that threshold (up to 32 MiB) each time such a block is freed. From then on the
bridge's large buffers (256 KiB payloads, their decoded text, dead letters of ~300 KiB) come from the
heap, where the short-lived ones leave holes between the long-lived ones (records waiting for Kafka's
acknowledgement) that the heap cannot give back: with 67 MB of records held, 243 MB resident instead of
113 MB. Fixing the threshold turns the raising off. Nothing changes where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD: Final = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES: Final = 131_072
"""glibc's initial threshold: kept, not raised."""


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve allocations of ``nbytes`` and more with mmap from now on; False where that is unsupported."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.info("no mallopt in this C library: the heap's mmap threshold is left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, nbytes))
