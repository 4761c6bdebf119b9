"""LightGBM's text model file, read without LightGBM.

A serving worker needs a booster's trees (for :mod:`core.tree_shap`) but not the
library: importing ``lightgbm`` pulls in scikit-learn, SciPy, pandas and pyarrow,
~150 MB in each worker. :func:`parse_model_text` turns the ``model.txt`` that
``Booster.save_model`` writes into the layout of ``Booster.dump_model()``, limited
to the keys :class:`core.tree_shap.TreeShapTables` reads. The file stores every
number with round-trip precision, so the trees are the booster's own, bit for bit;
a test compares the result with ``dump_model()`` key by key.
"""

from __future__ import annotations

from typing import Any

# decision_type bits, as LightGBM's tree.h defines them.
_CATEGORICAL = 1
_DEFAULT_LEFT = 2
_MISSING_TYPES = ("None", "Zero", "NaN")


class ModelTextError(ValueError):
    """The text is not a LightGBM model this reader understands."""


def _blocks(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The header's ``key=value`` lines and one such mapping per ``Tree=`` block."""
    header: dict[str, str] = {}
    trees: list[dict[str, str]] = []
    current = header
    for line in text.splitlines():
        if line == "end of trees":
            break
        if line.startswith("Tree="):
            current = {}
            trees.append(current)
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key] = value
        elif line:
            current[line] = ""  # a bare flag, e.g. "average_output"
    return header, trees


def _numbers(block: dict[str, str], key: str, kind: type = float) -> list[Any]:
    value = block.get(key, "")
    return [kind(x) for x in value.split()] if value else []


def _tree(block: dict[str, str], index: int) -> dict[str, Any]:
    """One tree in ``dump_model``'s nested layout."""
    leaf_value = _numbers(block, "leaf_value")
    leaf_count = _numbers(block, "leaf_count", int)
    num_leaves = int(block["num_leaves"])
    tree: dict[str, Any] = {
        "tree_index": index,
        "num_leaves": num_leaves,
        "num_cat": int(block.get("num_cat", 0)),
        "shrinkage": float(block.get("shrinkage", 1)),
    }
    linear = block.get("is_linear", "0") != "0"

    def leaf(i: int) -> dict[str, Any]:
        node: dict[str, Any] = {"leaf_index": i, "leaf_value": leaf_value[i]}
        if leaf_count:
            node["leaf_count"] = leaf_count[i]
        if linear:
            # The tables refuse linear trees; the key is what they look for.
            node["leaf_const"] = None
        return node

    if num_leaves == 1:
        root = leaf(0)
        del root["leaf_index"]  # as dump_model() writes a tree that never split
        tree["tree_structure"] = root
        return tree
    feature = _numbers(block, "split_feature", int)
    threshold = _numbers(block, "threshold")
    decision = _numbers(block, "decision_type", int)
    left = _numbers(block, "left_child", int)
    right = _numbers(block, "right_child", int)
    count = _numbers(block, "internal_count", int)

    def child(ref: int) -> dict[str, Any]:
        # A negative reference -k-1 names leaf k; others an internal node.
        return leaf(~ref) if ref < 0 else split(ref)

    def split(i: int) -> dict[str, Any]:
        kind = decision[i]
        return {
            "split_index": i,
            "split_feature": feature[i],
            "threshold": threshold[i],
            "decision_type": "==" if kind & _CATEGORICAL else "<=",
            "default_left": bool(kind & _DEFAULT_LEFT),
            "missing_type": _MISSING_TYPES[(kind >> 2) & 3],
            "internal_count": count[i],
            "left_child": child(left[i]),
            "right_child": child(right[i]),
        }

    tree["tree_structure"] = split(0)
    return tree


def parse_model_text(text: str) -> dict[str, Any]:
    """A LightGBM text model as ``Booster.dump_model()`` lays it out.

    Only what :meth:`core.tree_shap.TreeShapTables.from_dump` and the serving
    checks read: ``num_class``, ``average_output``, ``feature_names`` and, per
    tree, the nested ``tree_structure`` (splits with feature, threshold, decision
    and missing type and row count; leaves with value and row count; linear leaves
    marked).

    Raises:
        ModelTextError: Not a LightGBM text model.
    """
    header, blocks = _blocks(text)
    if "feature_names" not in header or "num_class" not in header:
        raise ModelTextError("not a LightGBM text model (no feature_names/num_class)")
    try:
        return {
            "num_class": int(header["num_class"]),
            "num_tree_per_iteration": int(header.get("num_tree_per_iteration", 1)),
            "average_output": "average_output" in header,
            "feature_names": header["feature_names"].split(),
            "objective": header.get("objective", ""),
            "tree_info": [_tree(block, i) for i, block in enumerate(blocks)],
        }
    except (KeyError, IndexError, ValueError) as exc:
        raise ModelTextError(f"unreadable tree: {type(exc).__name__}: {exc}") from exc
