"""Many stored states as numpy columns, parsed from their blobs at once.

The binary layout (:mod:`core.state_codec`) keeps every number of a state in one
run of doubles, so a batch of blobs becomes one array with a single
``np.frombuffer``; each section (the scalars, the minute, hour and day buckets,
the session, category, cart-add and purchase times) is then gathered by index
arithmetic, for all states together. Nothing here builds a Python object per
number, which is what made reading a state cost more than the rest of scoring.

A section's items keep their order within each state (dict order, as written),
and states follow each other in the order given: window sums over them
(:mod:`core.state_features`) add in the order the scalar code added in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.state_codec import DAY_SLOTS, HEADER, ITEM_DOUBLES, MAGIC, SCALARS, SLOTS

# The header as numpy reads it: magic, then the seven counts.
_HEADER_DTYPE = np.dtype([("magic", "S4"), ("counts", "<u4", (7,))])
# The runs of doubles of a state, in layout order: (section, doubles per item,
# whether the run is the section's bucket keys). Run 0 is the scalars.
_RUNS = (
    (0, 1, True),
    (0, SLOTS, False),
    (1, 1, True),
    (1, SLOTS, False),
    (2, 1, True),
    (2, DAY_SLOTS, False),
    (3, 2, False),
    (4, 1, False),
    (5, 1, False),
    (6, 1, False),
)
_RUN_WIDTHS = np.array([SCALARS, *(w for _, w, _ in _RUNS)], dtype=np.int64)
# Which header count gives each run's items.
_RUN_COUNT = np.array([section for section, _, _ in _RUNS], dtype=np.intp)
_ITEM_DOUBLES = np.array(ITEM_DOUBLES, dtype=np.int64)


def ragged_arange(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``."""
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


class Section:
    """One kind of item (say the hour buckets) of every state in a block.

    ``values`` has one row per item, states one after the other (a bucket's
    counters; its key is in ``keys``); ``start`` and ``count`` give each state's
    rows, ``owner`` each row's state.
    """

    __slots__ = ("_start", "count", "keys", "owner", "values")

    def __init__(
        self,
        values: np.ndarray,
        count: np.ndarray,
        owner: np.ndarray,
        keys: np.ndarray | None = None,
    ) -> None:
        self.values, self.count, self.owner, self.keys = values, count, owner, keys
        self._start: np.ndarray | None = None

    @property
    def start(self) -> np.ndarray:
        """Each state's first row (computed on first use: most reads need none)."""
        if self._start is None:
            self._start = np.cumsum(self.count) - self.count
        return self._start

    def pairs(self, state_of_row: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Every (row, item) pair where the row reads the item's state.

        Rows in order, and each row's items in their stored order. ``None``:
        row i reads state i.
        """
        if state_of_row is None:
            return self.owner, np.arange(len(self.owner), dtype=np.int64)
        count = self.count[state_of_row]
        rows = np.repeat(np.arange(len(state_of_row), dtype=np.int64), count)
        return rows, ragged_arange(self.start[state_of_row], count)


@dataclass(frozen=True)
class StateBlock:
    """The numbers of ``n`` states (see :func:`parse_blobs`).

    ``scalars`` is ``(n, SCALARS)`` in the codec's order (NaN for ``None``);
    ``minutes`` and ``hours`` hold ``SLOTS`` counters per bucket, ``days``
    ``DAY_SLOTS`` (their keys in ``keys``), ``sessions`` ``[first, last]``,
    ``categories``, ``cart_adds`` and ``purchases`` one time each.
    """

    n: int
    scalars: np.ndarray
    minutes: Section
    hours: Section
    days: Section
    sessions: Section
    categories: Section
    cart_adds: Section
    purchases: Section


def parse_blobs(blobs: Sequence[bytes]) -> StateBlock:
    """The states of binary blobs (:func:`core.state_codec.encode`) as one block.

    Raises:
        ValueError: A blob is not in the binary layout, or is cut short.
    """
    n = len(blobs)
    heads = b"".join([blob[: HEADER.size] for blob in blobs])
    if len(heads) != n * HEADER.size:
        raise ValueError("a state blob is shorter than its header")
    header = np.frombuffer(heads, dtype=_HEADER_DTYPE)
    if n and not (header["magic"] == MAGIC).all():
        raise ValueError("a state blob is not in the binary layout")
    counts = header["counts"].astype(np.int64)  # (n, 7)
    doubles = SCALARS + counts @ _ITEM_DOUBLES
    ends = (HEADER.size + 8 * doubles).tolist()
    body = b"".join(
        [blob[HEADER.size : end] for blob, end in zip(blobs, ends, strict=True)]
    )
    if len(body) != 8 * int(doubles.sum()):
        raise ValueError("a state blob is cut short")
    flat = np.frombuffer(body, dtype="<f8")
    # Every run of doubles (the scalars, then each section's) of every state,
    # ordered run by run, gathered with one index: a few numpy calls per block,
    # not per state or section.
    items = np.empty((n, 1 + len(_RUNS)), dtype=np.int64)
    items[:, 0] = 1
    items[:, 1:] = counts[:, _RUN_COUNT]
    lengths = items * _RUN_WIDTHS
    if n == 1:
        # One state's runs already follow each other in that order (a single
        # user's request: no index to build).
        gathered = flat
    else:
        begins = (
            (np.cumsum(doubles) - doubles)[:, None]
            + np.cumsum(lengths, axis=1)
            - lengths
        )
        gathered = flat[ragged_arange(begins.T.ravel(), lengths.T.ravel())]
    run_ends = [0, *np.cumsum(lengths.sum(axis=0)).tolist()]
    scalars = gathered[: run_ends[1]].reshape(n, SCALARS)
    runs = [
        gathered[run_ends[k] : run_ends[k + 1]] for k in range(1, len(run_ends) - 1)
    ]
    sections: list[Section] = []
    keys: np.ndarray | None = None
    for k, (section, width, is_keys) in enumerate(_RUNS):
        if is_keys:
            keys = runs[k]
            continue
        count = counts[:, section]
        owner = np.repeat(np.arange(n, dtype=np.int64), count)
        values = runs[k].reshape(-1, width) if width > 1 else runs[k]
        sections.append(Section(values, count, owner, keys))
        keys = None
    return StateBlock(n, scalars, *sections)
