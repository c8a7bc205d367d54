"""Keep the client's memory flat while it moves multi-MiB blocks through a thread pool.

glibc raises its mmap threshold each time a large mmapped chunk is freed, after which the
1-4 MiB block buffers come from per-thread arenas and fragment them: peak RSS then grows
with the file. Pinning the threshold (and capping the arenas) returns every block buffer
to the OS when it is freed. Best effort: a no-op where glibc's `mallopt` is not available.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_allocator(mmap_threshold: int = 256 * 1024, arenas: int = 2) -> bool:
    """Pin glibc's mmap threshold and cap its arenas; True when it took effect."""
    try:
        # The process's own symbols hold glibc's when Python links against it;
        # ctypes.util.find_library("c") ran `ldconfig -p`, 20 ms of every sync's start.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    return bool(mallopt(M_ARENA_MAX, arenas) == 1 and ok)
