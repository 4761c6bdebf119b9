"""Exact path-dependent TreeSHAP by table look-up: the same values as LightGBM's.

LightGBM's ``pred_contrib`` (and ``shap.TreeExplainer``) walk every tree for every
row, combining path weights as they go: O(trees x leaves x depth^2) per row. But
a leaf's share of a row's SHAP values depends on the row only through which of
the leaf's path conditions the row meets. For a leaf with value ``v`` whose path
tests the distinct features ``U`` (``u`` of them), let ``z_j`` be the share of
the training rows that go the path's way at ``j``'s splits (the product over a
feature's repeated splits), ``H`` the features whose conditions the row meets
("hot") and ``C`` the others. The leaf adds to feature ``i``

    i cold:  -v * P(C) * A(H)
    i hot:   v * (1 - z_i) * P(C) * A(H minus i)

with ``P(C)`` the product of ``z`` over ``C`` and
``A(G) = sum over S in G of |S|! (u-|S|-1)! / u! * prod_{j in G minus S} z_j``
(the Shapley sum over coalitions, path-dependent as TreeSHAP defines it). Every
value depends only on the leaf and the hot set, so all ``2^u`` of them are
computed once, when the model loads; a request then tests each path condition,
forms each leaf's hot-set index and gathers, all as whole-matrix numpy
operations. No request does work that depends only on the model.

Models this does not cover exactly (categorical or zero-as-missing splits, linear
trees, several classes, averaged output, paths with more than
:data:`MAX_PATH_FEATURES` distinct features, tables over :data:`MAX_TABLE_BYTES`)
get no tables, and the caller uses LightGBM's own ``pred_contrib``. Rows with a
NaN input are left to LightGBM as well, whose missing-value routing is the
reference.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.tree_predict import (
    Unsupported,
    as_lightgbm_reads,
    check_leaf,
    check_model,
    check_split,
)

logger = logging.getLogger(__name__)

MAX_PATH_FEATURES = 12
MAX_TABLE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class _Leaf:
    value: float
    # Per distinct path feature, in order of first appearance: the feature, the
    # interval (low, high] a row's value must lie in to follow the path, and the
    # share of training rows that follow it (z).
    features: tuple[int, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    zero: tuple[float, ...]


def _leaves(node: Mapping[str, Any]) -> list[_Leaf]:
    """Each leaf of a dumped tree with its path's conditions merged per feature."""
    out: list[_Leaf] = []
    # (node, [(feature, low, high, zero)] in first-appearance order)
    stack: list[tuple[Mapping[str, Any], list[list[Any]]]] = [(node, [])]
    while stack:
        current, path = stack.pop()
        if "leaf_value" in current:
            check_leaf(current)
            out.append(
                _Leaf(
                    value=float(current["leaf_value"]),
                    features=tuple(p[0] for p in path),
                    low=tuple(p[1] for p in path),
                    high=tuple(p[2] for p in path),
                    zero=tuple(p[3] for p in path),
                )
            )
            continue
        check_split(current)
        feature, threshold = int(current["split_feature"]), float(current["threshold"])
        total = float(current["internal_count"])
        for child, goes_left in (
            (current["left_child"], True),
            (current["right_child"], False),
        ):
            count = float(child.get("internal_count", child.get("leaf_count", 0)))
            share = count / total if total else 0.0
            merged = [list(p) for p in path]
            for entry in merged:
                if entry[0] == feature:
                    break
            else:
                entry = [feature, -math.inf, math.inf, 1.0]
                merged.append(entry)
            if goes_left:
                entry[2] = min(entry[2], threshold)
            else:
                entry[1] = max(entry[1], threshold)
            entry[3] *= share
            stack.append((child, merged))
    return out


def _expected_value(tree: Mapping[str, Any]) -> float:
    """LightGBM's ``Tree::ExpectedValue``: leaf outputs weighted by leaf counts."""
    root = tree["tree_structure"]
    if "leaf_value" in root:
        return float(root["leaf_value"])
    total = float(root["internal_count"])
    value = 0.0
    stack = [root]
    while stack:
        node = stack.pop()
        if "leaf_value" in node:
            value += (float(node["leaf_count"]) / total) * float(node["leaf_value"])
        else:
            stack.extend((node["right_child"], node["left_child"]))
    return value


def _leaf_table(leaf: _Leaf) -> np.ndarray:
    """Every hot set's contributions of one leaf: shape ``(2^u, u)``.

    Row ``m`` is the hot set whose bit ``k`` says whether the ``k``-th path
    feature is hot; column ``k`` is what the leaf adds to that feature.
    """
    u = len(leaf.features)
    z = np.asarray(leaf.zero, dtype=np.float64)
    masks = np.arange(1 << u)
    bits = (masks[:, None] >> np.arange(u)) & 1  # (2^u, u)
    size = bits.sum(axis=1)
    # Elementary symmetric polynomials of z over each mask's features:
    # sym[m, i] = e_i(z restricted to m), built one feature at a time.
    sym = np.zeros((1 << u, u + 1))
    sym[0, 0] = 1.0
    for k in range(u):
        low, high = 1 << k, 1 << (k + 1)
        sym[low:high] = sym[:low]
        sym[low:high, 1:] += z[k] * sym[:low, :-1]
    weights = np.array(
        [
            math.factorial(s) * math.factorial(u - s - 1) / math.factorial(u)
            for s in range(u)
        ]
    )
    # A(m) = sum_s w(s) * e_{|m|-s}(m), for |m| < u (a set without some feature).
    # As a sum over i = |m| - s: e_i(m) weighted by w(|m| - i); the full set
    # (|m| = u) is never needed and weighs nothing.
    shift = size[:, None] - np.arange(u + 1)[None, :]
    usable = (shift >= 0) & (size[:, None] < u)
    coalition = (sym * np.where(usable, weights[np.clip(shift, 0, u - 1)], 0.0)).sum(1)
    cold_product = np.prod(np.where(bits == 1, 1.0, z), axis=1)  # P(C) per mask
    table = np.empty((1 << u, u))
    for k in range(u):
        without = masks & ~(1 << k)
        hot = bits[:, k] == 1
        table[:, k] = np.where(
            hot,
            leaf.value * (1.0 - z[k]) * cold_product * coalition[without],
            -leaf.value * cold_product * coalition[masks],
        )
    return table


@dataclass(frozen=True)
class TreeShapTables:
    """A booster's TreeSHAP, precomputed per leaf and hot set (see the module)."""

    n_features: int
    expected_value: float
    # One entry per (leaf, distinct path feature): which input it tests, the
    # interval, its bit in the leaf's hot-set index, and where the leaf's table
    # starts in ``table`` plus the entry's column.
    feature: np.ndarray
    low: np.ndarray
    high: np.ndarray
    pad: np.ndarray  # (leaves, widest path): each leaf's entries, then -> a pad row
    pad_bits: np.ndarray  # 1, 2, 4, ... per position in a path
    leaf_width: np.ndarray  # u of each leaf
    entry_leaf: np.ndarray
    entry_offset: np.ndarray  # the leaf's table offset plus the entry's column
    table: np.ndarray
    # Entries reordered by feature, and where each used feature's run starts.
    by_feature: np.ndarray
    feature_starts: np.ndarray
    used_features: np.ndarray

    @classmethod
    def from_dump(cls, dump: Mapping[str, Any]) -> TreeShapTables:
        """Tables of a model as ``Booster.dump_model()`` gives it.

        Raises:
            Unsupported: The model is outside what the tables reproduce (see the
                module docstring).
        """
        check_model(dump)
        leaves: list[_Leaf] = []
        expected = 0.0
        for tree in dump["tree_info"]:
            if "leaf_value" in tree["tree_structure"]:
                check_leaf(tree["tree_structure"])
            expected += _expected_value(tree)
            if "leaf_value" not in tree["tree_structure"]:
                leaves.extend(_leaves(tree["tree_structure"]))
        widths = [len(leaf.features) for leaf in leaves]
        if widths and max(widths) > MAX_PATH_FEATURES:
            raise Unsupported(f"a path with {max(widths)} distinct features")
        table_bytes = sum((1 << w) * w for w in widths) * 8
        if table_bytes > MAX_TABLE_BYTES:
            raise Unsupported(f"tables of {table_bytes / 2**20:.0f} MB")
        tables = [_leaf_table(leaf) for leaf in leaves]
        bases = np.cumsum([0, *(t.size for t in tables)])[:-1]
        feature = np.array([f for leaf in leaves for f in leaf.features], dtype=np.intp)
        entry_leaf = np.repeat(np.arange(len(leaves)), widths)
        columns = (
            np.concatenate([np.arange(w) for w in widths]) if leaves else np.zeros(0)
        )
        starts = np.cumsum([0, *widths])[:-1]
        # Row len(feature) of the padded hot block is the never-hot pad row.
        pad = np.full((len(leaves), max(widths, default=0)), len(feature), np.intp)
        for leaf, (start, width) in enumerate(zip(starts, widths, strict=True)):
            pad[leaf, :width] = np.arange(start, start + width)
        by_feature = np.argsort(feature, kind="stable")
        used, feature_starts = np.unique(feature[by_feature], return_index=True)
        return cls(
            n_features=len(dump["feature_names"]),
            expected_value=expected,
            feature=feature,
            low=np.array([x for leaf in leaves for x in leaf.low]),
            high=np.array([x for leaf in leaves for x in leaf.high]),
            pad=pad,
            pad_bits=(1 << np.arange(pad.shape[1])).astype(np.int32),
            leaf_width=np.asarray(widths, dtype=np.int32),
            entry_leaf=entry_leaf,
            entry_offset=(np.asarray(bases)[entry_leaf] + columns).astype(np.intp),
            table=np.concatenate([t.ravel() for t in tables])
            if tables
            else np.zeros(0),
            by_feature=by_feature,
            feature_starts=feature_starts.astype(np.intp),
            used_features=used.astype(np.intp),
        )

    def contributions(self, inputs: np.ndarray) -> np.ndarray:
        """SHAP values as ``pred_contrib`` lays them out: ``(rows, features + 1)``.

        The last column is the expected value. ``inputs`` must hold no NaN (see
        the module docstring).
        """
        rows = inputs.shape[0]
        out = np.zeros((rows, self.n_features + 1))
        out[:, -1] = self.expected_value
        if not len(self.feature) or not rows:
            return out
        # Inputs as LightGBM reads them; -inf, raised to the lowest finite
        # double (below every threshold), also passes the open "> -inf" bound
        # of a path with no left turn on its feature. Entries as rows, users
        # as columns: every reduction below then adds whole contiguous rows,
        # vectorised over the users.
        values = as_lightgbm_reads(inputs).T[self.feature]
        hot = (values > self.low[:, None]) & (values <= self.high[:, None])
        # Each leaf's hot-set index: its entries' bits, gathered into a
        # (leaves, widest path, users) block (short paths padded with a row
        # that is never hot) and weighted by their bits; then scaled by the
        # leaf's width so that adding an entry's offset addresses its value.
        padded = np.concatenate([hot, np.zeros((1, rows), dtype=bool)])[self.pad]
        index = np.einsum("lwn,w->ln", padded.astype(np.int32), self.pad_bits)
        index *= self.leaf_width[:, None]
        # Offsets are intp, so the sum is too: np.take then gathers without
        # converting the index (twice the speed of ``table[flat]`` on int32).
        flat = index[self.entry_leaf] + self.entry_offset[:, None]
        picked = np.take(self.table, flat, mode="wrap")  # every index is in range
        out[:, self.used_features] = np.add.reduceat(
            picked[self.by_feature], self.feature_starts, axis=0
        ).T
        return out


def probe_rows(tables: TreeShapTables, rows: int = 64, seed: int = 0) -> np.ndarray:
    """Inputs on both sides of every split: each value a threshold or just above.

    Checking the tables on these tests every condition at its boundary, where a
    ``<`` for a ``<=`` would show.
    """
    rng = np.random.default_rng(seed)
    edges = np.concatenate([tables.low, tables.high])
    features = np.concatenate([tables.feature, tables.feature])
    finite = np.isfinite(edges)
    edges, features = edges[finite], features[finite]
    out = np.zeros((rows, tables.n_features))
    for j in range(tables.n_features):
        mine = edges[features == j]
        if len(mine):
            picks = rng.choice(mine, size=rows)
            above = rng.random(rows) < 0.5
            out[:, j] = np.where(above, np.nextafter(picks, np.inf), picks)
    return out


def checked_tables(booster: Any) -> TreeShapTables | None:
    """A LightGBM booster's tables, if they reproduce its ``pred_contrib``.

    Built from ``booster.dump_model()`` and compared with the booster's own
    values on :func:`probe_rows`; ``None`` (the caller then uses the booster)
    when the model is unsupported or any value differs beyond rounding.
    """
    try:
        tables = TreeShapTables.from_dump(booster.dump_model())
    except Unsupported as exc:
        logger.info("TreeSHAP tables not used: %s", exc)
        return None
    probe = probe_rows(tables)
    want = booster.predict(probe, pred_contrib=True, num_threads=1)
    if want.shape != (len(probe), tables.n_features + 1) or not np.allclose(
        tables.contributions(probe), want, rtol=1e-9, atol=1e-12
    ):
        logger.warning("TreeSHAP tables disagree with LightGBM; not used")
        return None
    return tables
