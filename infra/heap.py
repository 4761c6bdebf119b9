"""The cyclic garbage collector, kept out of a long-running worker's way.

Imports and set-up leave a worker ~100-300k long-lived objects (modules, classes,
pydantic and BentoML machinery). Every full collection rescans them all and frees
nothing; in the stream worker a profile showed full collections of ~45 ms, and a
serving worker answering batches pays the same as latency spikes. Freezing what
set-up made moves it to the permanent generation, so collections scan only what
requests and batches create. Young collections every 700 allocations also ran
hundreds of times per batch (each event or user allocates dicts and tuples, nearly
all freed by reference counting); every 50,000 costs a few MB at most.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 100)


def settle_after_setup() -> None:
    """Collect once, freeze what survives, and collect the young less often.

    Call when a worker's set-up is done, before it starts taking work.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
