"""Markdown building blocks of the report: tables and number formats."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def num(value: Any, digits: int = 4) -> str:
    """A number for a table cell: ``n/a`` when missing or NaN, integers with thousands commas."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def ci(interval: Sequence[float] | None, digits: int = 4, signed: bool = False) -> str:
    """``[lo, hi]`` of a 95% interval, or an empty cell."""
    if not interval:
        return ""
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return f"[{f.format(interval[0])}, {f.format(interval[1])}]"


def cell(text: Any) -> str:
    """Free text (a title, a generated sentence) as one table cell: no row breaks, no column breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    """A markdown table; ``align``: one of l/r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(c if isinstance(c, str) else num(c) for c in row) + " |" for row in rows]
    return lines


def image(alt: str, link: str | None) -> list[str]:
    return ["", f"![{alt}]({link})"] if link else []
