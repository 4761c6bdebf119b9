"""Comparisons of feature vectors, for tests that hold two feature paths equal."""

from __future__ import annotations


def assert_features_equal(
    got: dict[str, float | None], want: dict[str, float | None], tol: float = 1e-9
) -> None:
    """Same feature names and values: floats within ``tol``, missing both sides."""
    assert got.keys() == want.keys()
    for name, value in want.items():
        other = got[name]
        if value is None or other is None:
            assert other is value, (name, other, value)
        else:
            assert abs(other - value) <= tol * max(1.0, abs(value)), (
                name,
                other,
                value,
            )
