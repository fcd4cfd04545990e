"""Stage events: a stage's start, end (with its time and key figures), reuse or failure, as
records of the ``rayrec.stage`` logger; the one place that holds the running stage."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rayrec.figures import key_figures

STAGE = "rayrec.stage"  # the logger of stage start / end records


@dataclass
class _Stage:
    label: str
    name: str
    started: float = field(default_factory=time.perf_counter)


_current: _Stage | None = None


def _stage_record(event: str, text: str, level: int = logging.INFO, **extra: Any) -> None:
    logging.getLogger(STAGE).log(level, "%s", text, extra={"stage_event": event, **extra})


def stage_start(name: str, index: int | None = None) -> None:
    """A stage begins: its line (live on a terminal) until :func:`stage_done` / :func:`stage_failed`."""
    global _current
    _current = _Stage(f"[{index}] {name}" if index else name, name)
    _stage_record("start", f"{_current.label}: running", stage_label=_current.label)


def stage_done(result: Any = None) -> float:
    """The current stage ended: its time and key figures; returns its seconds."""
    stage = _current or _Stage("stage", "stage")
    seconds = time.perf_counter() - stage.started
    figures = key_figures(stage.name, result)
    _stage_record("end", f"{stage.label}: done in {seconds:.1f}s" + (f". {figures}" if figures else ""))
    _end()
    return seconds


def stage_reused(name: str, index: int | None, finished: str | None, result: Any = None) -> None:
    label = f"[{index}] {name}" if index else name
    figures = key_figures(name, result)
    _stage_record("end", f"{label}: reused (built {finished})" + (f". {figures}" if figures else ""))


def stage_failed(exc: BaseException, continuing: bool = False) -> float:
    """The current stage raised: one line on the console, the traceback in the log file."""
    stage = _current or _Stage("stage", "stage")
    seconds = time.perf_counter() - stage.started
    then = " (continuing; see the report)" if continuing else ""
    _stage_record("end", f"{stage.label}: FAILED after {seconds:.1f}s: {type(exc).__name__}: {exc}{then}",
                  logging.ERROR)
    logging.getLogger("rayrec.traceback").info("%s failed", stage.label, exc_info=exc)  # file only
    _end()
    return seconds


def _end() -> None:
    global _current
    _current = None


@contextmanager
def stage(name: str) -> Iterator[None]:
    """``with stage("train"): ...``: start, then done (or failed and re-raised)."""
    stage_start(name)
    try:
        yield
    except BaseException as exc:
        stage_failed(exc)
        raise
