"""Freed memory stays with the process: no fresh pages per large temporary."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Allocates four 4 MB arrays and frees them, 30 times (a request's temporaries),
# then prints the page faults that cost; with or without keep_freed_memory().
_CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from infra.heap import keep_freed_memory

    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    def request():
        arrays = [np.ones(2**19) for _ in range(4)]
        return sum(a.sum() for a in arrays)

    request()  # warm up numpy itself
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(30):
        request()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], int(out[1])


def test_large_temporaries_reuse_the_heap_after_keep_freed_memory() -> None:
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    # 120 fresh 4 MB blocks fault in ~120,000 pages; reused ones, almost none.
    assert default > 10_000
    assert kept < 1_000
