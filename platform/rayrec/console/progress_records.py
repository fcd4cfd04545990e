"""Progress records: :func:`progress` logs ``step 12/24 loss=2.1`` (from the driver or a worker),
:func:`parse_progress` reads such a line back; plus the short formats the console shows."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

PROGRESS = "rayrec.progress"  # the logger of progress records

_PROGRESS_TEXT = re.compile(
    r"^(?P<what>.+?) (?P<done>\d+)/(?P<total>\d+)(?: \((?P<note>[^)]*)\))?(?P<figures>(?: \S+=\S+)*)$"
)


@dataclass
class Progress:
    what: str
    done: int
    total: int
    note: str | None = None
    figures: dict[str, str] = field(default_factory=dict)


def progress(what: str, done: int, total: int, note: str | None = None, **figures: Any) -> None:
    """Report that ``done`` of ``total`` ``what`` (steps, epochs, requests...) are done, with
    figures such as ``loss=2.1``: the console's live stage line, a plain line in log files."""
    text = f"{what} {done}/{total}" + (f" ({note})" if note else "")
    text += "".join(f" {k}={_short(v)}" for k, v in figures.items())
    logging.getLogger(PROGRESS).info(text)


def parse_progress(text: str) -> Progress | None:
    m = _PROGRESS_TEXT.match(text)
    if not m:
        return None
    figures = dict(kv.split("=", 1) for kv in m["figures"].split())
    return Progress(m["what"], int(m["done"]), int(m["total"]), m["note"], figures)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace(" ", "_")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
