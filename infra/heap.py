"""The cyclic garbage collector, kept out of a long-running worker's way.

Imports and set-up leave a worker ~100-300k long-lived objects (modules, classes,
pydantic and BentoML machinery). Every full collection rescans them all and frees
nothing; in the stream worker a profile showed full collections of ~45 ms, and a
serving worker answering batches pays the same as latency spikes. Freezing what
set-up made moves it to the permanent generation, so collections scan only what
requests and batches create. Young collections every 700 allocations also ran
hundreds of times per batch (each event or user allocates dicts and tuples, nearly
all freed by reference counting); every 50,000 costs a few MB at most.

Freed memory is also kept for reuse (:func:`keep_freed_memory`): a batch's numpy
temporaries (a few MB for explanations of 100 users) otherwise went back to the
kernel after every request and came back as fresh pages on the next: ~1,200
page faults and ~2 ms of system time per batch, a third of its cost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

logger = logging.getLogger(__name__)

THRESHOLDS = (50_000, 20, 100)
# glibc's mallopt parameters, and the values set.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest on 64-bit
TRIM_THRESHOLD_BYTES = 256 * 2**20


def keep_freed_memory() -> bool:
    """Serve blocks up to 32 MB from the heap and keep up to 256 MB freed there.

    glibc maps larger blocks afresh on every allocation and unmaps them on free,
    and returns the heap's free top beyond 128 KB; its own adaptive threshold
    did not keep numpy's temporaries here. Returns whether it applied (glibc
    only; elsewhere nothing changes).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    done = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and done
    if not done:
        logger.info("mallopt refused the heap thresholds; memory is returned as usual")
    return done


def settle_after_setup() -> None:
    """Collect once, freeze survivors, collect the young less often, keep freed memory.

    Call when a worker's set-up is done, before it starts taking work.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    keep_freed_memory()
