"""HTML building blocks of the training report: escaping, number text, tables.

Text from a run (a model tag, a feature name, a promotion reason) goes through
:func:`_esc` before it joins the page; :func:`_table` takes cells already escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

_MISSING = "\N{EN DASH}"  # shown for absent or undefined values


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return _MISSING
    if isinstance(value, str):
        return value
    number = float(value)
    if not math.isfinite(number):
        return _MISSING
    if number.is_integer():
        return f"{int(number):,}"
    return f"{number:.{digits}f}"


def _table(
    head: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] = ()
) -> str:
    """An HTML table; cells are pre-escaped HTML."""
    cls = [
        ' class="num"' if i < len(numeric) and numeric[i] else ""
        for i in range(len(head))
    ]
    out = ["<table><thead><tr>"]
    out += [f"<th{cls[i]}>{_esc(h)}</th>" for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append(
            "<tr>"
            + "".join(f"<td{cls[i]}>{c}</td>" for i, c in enumerate(row))
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_esc(caption)}</figcaption></figure>"
