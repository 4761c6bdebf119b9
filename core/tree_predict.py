"""A booster's raw prediction in numpy, from its dumped trees: LightGBM's to the bit.

Serving workers do not import LightGBM (see :mod:`core.lgbm_text`), so the
unexplained score needs the trees' sum without it. All trees are walked at once:
every node of every tree lives in one set of arrays, a leaf points to itself, and
``depth`` steps of "left if the value is at most the threshold" take every row
from every root to its leaf. The leaves' values are then added tree by tree, in
the model's order, as LightGBM adds them, so the result is the same double.

Covers numeric ``<=`` splits on rows without NaN; :meth:`TreeArrays.from_dump`
raises :class:`Unsupported` for anything else (the checks :mod:`core.tree_shap`
applies too), and the caller keeps LightGBM for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

_LOWEST = np.finfo(np.float64).min
# LightGBM reads an input of magnitude at most its kZeroThreshold (1e-35 as a
# float) as 0 (c_api.cpp keeps only larger values of a dense row).
ZERO_THRESHOLD = float(np.float32(1e-35))


def as_lightgbm_reads(inputs: np.ndarray) -> np.ndarray:
    """Inputs as LightGBM's predictor sees them: near-zero values are 0, and -inf
    is the lowest finite double (it goes left at every split, as LightGBM sends
    it, and compares like any other value)."""
    values = np.maximum(inputs, _LOWEST)
    values[np.abs(values) <= ZERO_THRESHOLD] = 0.0
    return values


class Unsupported(ValueError):
    """The model has something the numpy replays do not reproduce exactly."""


def check_model(dump: Mapping[str, Any]) -> None:
    """Refuse several classes or averaged output (random forests)."""
    if int(dump.get("num_class", 1)) != 1 or dump.get("average_output"):
        raise Unsupported("several classes or averaged output")


def check_leaf(leaf: Mapping[str, Any]) -> None:
    """Refuse a leaf whose output is not its value (a linear tree's leaf)."""
    if any(key in leaf for key in ("leaf_const", "leaf_coeff", "leaf_features")):
        raise Unsupported("linear trees")


def check_split(node: Mapping[str, Any]) -> None:
    """Refuse a split other than ``<=`` with no or NaN missing values.

    A categorical split is not a comparison, and zero-as-missing sends zeros
    (and near-zero inputs) the default way instead of comparing them.
    """
    if node.get("decision_type") != "<=" or node.get("missing_type") not in (
        "None",
        "NaN",
    ):
        raise Unsupported(
            f"split {node.get('decision_type')!r} with missing type "
            f"{node.get('missing_type')!r}"
        )


@dataclass(frozen=True)
class TreeArrays:
    """Every tree's nodes as flat arrays (see the module docstring)."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray  # a leaf's output; 0 at splits
    roots: np.ndarray  # one per tree, in the model's order
    depth: int

    @classmethod
    def from_dump(cls, dump: Mapping[str, Any]) -> TreeArrays:
        """Arrays of a model as ``Booster.dump_model()`` (or ``parse_model_text``)
        gives it.

        Raises:
            Unsupported: The model has splits or outputs this walk does not
                reproduce (see :func:`check_model`, :func:`check_split`).
        """
        check_model(dump)
        feature: list[int] = []
        threshold: list[float] = []
        left: list[int] = []
        right: list[int] = []
        value: list[float] = []
        roots: list[int] = []
        depth = 0

        def new_node() -> int:
            feature.append(0)
            threshold.append(np.inf)
            left.append(0)
            right.append(0)
            value.append(0.0)
            return len(feature) - 1

        for tree in dump["tree_info"]:
            # (node, its id, its depth); children get ids as they are reached.
            root = new_node()
            roots.append(root)
            pending = [(tree["tree_structure"], root, 0)]
            while pending:
                node, me, level = pending.pop()
                depth = max(depth, level)
                if "leaf_value" in node:
                    check_leaf(node)
                    # A leaf sends every (non-NaN) value "left", to itself.
                    left[me] = right[me] = me
                    value[me] = float(node["leaf_value"])
                    continue
                check_split(node)
                feature[me] = int(node["split_feature"])
                threshold[me] = float(node["threshold"])
                for child, side in (
                    (node["left_child"], left),
                    (node["right_child"], right),
                ):
                    side[me] = new_node()
                    pending.append((child, side[me], level + 1))
        return cls(
            feature=np.asarray(feature, dtype=np.intp),
            threshold=np.asarray(threshold, dtype=np.float64),
            left=np.asarray(left, dtype=np.intp),
            right=np.asarray(right, dtype=np.intp),
            value=np.asarray(value, dtype=np.float64),
            roots=np.asarray(roots, dtype=np.intp),
            depth=depth,
        )

    def margins(self, inputs: np.ndarray) -> np.ndarray:
        """``predict(raw_score=True)`` for rows without NaN: one value per row."""
        rows = inputs.shape[0]
        if not len(self.roots):
            return np.zeros(rows)
        values = as_lightgbm_reads(inputs).ravel()
        width = inputs.shape[1]
        node = np.repeat(self.roots[:, None], rows, axis=1)  # (trees, rows)
        offsets = np.arange(rows)[None, :] * width
        for _ in range(self.depth):
            goes_left = values[offsets + self.feature[node]] <= self.threshold[node]
            node = np.where(goes_left, self.left[node], self.right[node])
        # A running sum is strictly tree by tree (a reduction may pair terms).
        return np.cumsum(self.value[node], axis=0)[-1]
