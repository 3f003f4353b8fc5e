"""Keep freed memory in the process: glibc malloc settings for the PNG-decoding loop.

Each image allocates a few MB (two decoded PNGs, their id maps) and frees them again. With
glibc's defaults, blocks that large are mmap'ed, or come from the heap top that is trimmed back
to the system once enough is free, so every image touches fresh pages: about 570 page faults
per 640x480 image, 15-20% of the evaluation time (bench/README.md). A fixed mmap threshold of
32 MiB and a trim threshold of 256 MiB let the process reuse those pages instead.

Only processes panoptix owns call this (its worker processes and the ``panoptix evaluate``
command); a library call in a user's process leaves their allocator alone.
"""

from __future__ import annotations

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Ask glibc's malloc to reuse freed blocks; False (and no change) where there is no glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
