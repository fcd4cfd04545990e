"""The driver's terminal: :class:`ConsoleHandler` writes the console's lines and keeps the
running stage's line live (:class:`_Live`: progress, ETA)."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from rayrec.console.progress_records import PROGRESS, Progress, _duration, parse_progress
from rayrec.console.stages import STAGE
from rayrec.storage import redact

PROGRESS_EVERY_S = 30.0  # without a terminal (job logs, pipes): at most one progress line this often


def _for_console(record: logging.LogRecord) -> bool:
    """Stage and progress lines, rayrec's warnings, anyone's errors."""
    if record.name in (STAGE, PROGRESS):
        return record.levelno >= logging.INFO
    if record.levelno >= logging.ERROR:
        return True
    return record.levelno >= logging.WARNING and (record.name == "rayrec" or record.name.startswith("rayrec."))


@dataclass
class _Live:
    """The running stage's line: its progress, the ETA measured from its first update."""

    label: str
    started: float
    progress: Progress | None = None
    figures: dict[str, str] = field(default_factory=dict)
    base: tuple[str, int, float] | None = None  # (what, done, when) the rate is measured from
    updated: float = 0.0
    printed: float | None = None

    def update(self, p: Progress, now: float) -> None:
        if self.base is None or self.base[0] != p.what or p.done < self.base[1]:
            self.base, self.figures = (p.what, p.done, now), {}
        self.progress, self.updated = p, now
        self.figures.update(p.figures)

    def eta(self, now: float) -> float | None:
        p, base = self.progress, self.base
        if p is None or base is None or p.done <= base[1] or p.total <= p.done:
            return None
        at_update = (p.total - p.done) * (self.updated - base[2]) / (p.done - base[1])
        return max(at_update - (now - self.updated), 0.0)

    def text(self, now: float, elapsed: bool) -> str:
        parts = [self.label]
        p = self.progress
        if p is not None:
            pct = f" {100 * p.done // max(p.total, 1)}%" if p.total else ""
            parts.append(f"{p.what} {p.done}/{p.total}{pct}" + (f" ({p.note})" if p.note else ""))
            shown = {k: v for k, v in self.figures.items() if k == "loss" or k.startswith("valid_")}
            if shown:
                parts.append(" ".join(f"{k}={v}" for k, v in shown.items()))
            eta = self.eta(now)
            if eta is not None:
                parts.append(f"ETA {_duration(eta)}")
        if elapsed:
            parts.append(_duration(now - self.started))
        return "  ".join(parts)


class ConsoleHandler(logging.Handler):
    """Writes the console's lines; on a terminal keeps the running stage's line live (redrawn
    every second, and after any other line)."""

    def __init__(self, stream: TextIO):
        super().__init__(logging.INFO)
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.live: _Live | None = None
        self.addFilter(_for_console)
        self._stop = threading.Event()
        if self.tty:
            threading.Thread(target=self._tick, name="rayrec-console", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = getattr(record, "stage_event", None)
            if event:
                self._on_stage(record, event)
            elif not (record.name == PROGRESS and self._on_progress(record)):
                self._line(self._plain(record))
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self._stop.set()
        self.acquire()
        try:
            self._clear()
        finally:
            self.release()
        super().close()

    def _plain(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())  # no URI credentials on a console or in a job log
        if record.levelno < logging.WARNING:
            return message
        source = "" if record.name.startswith("rayrec") else f" ({record.name})"
        return f"{record.levelname.lower()}{source}: {message}"

    def _on_stage(self, record: logging.LogRecord, event: str) -> None:
        if event == "start":
            self.live = _Live(record.stage_label, time.perf_counter())  # type: ignore[attr-defined]
            if self.tty:
                self._draw()
            else:
                self._line(record.getMessage())
            return
        self._clear()
        self.live = None
        self._line(record.getMessage())

    def _on_progress(self, record: logging.LogRecord) -> bool:
        """Fold a progress record into the live line; False when it is not one (print as is)."""
        p = parse_progress(record.getMessage())
        if p is None or self.live is None:
            return False
        now = time.perf_counter()
        live = self.live
        first = live.progress is None or live.progress.what != p.what
        live.update(p, now)
        if self.tty:
            self._draw()
        elif first or p.done >= p.total or now - (live.printed or 0.0) >= PROGRESS_EVERY_S:
            live.printed = now
            self._line(live.text(now, elapsed=False))
        return True

    def _line(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        if self.live is not None and self.tty:
            self._draw()
        self.stream.flush()

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        self.stream.write("\r\033[K" + self.live.text(time.perf_counter(), elapsed=True)[: width - 1])
        self.stream.flush()

    def _clear(self) -> None:
        if self.tty and self.live is not None:
            self.stream.write("\r\033[K")

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self.acquire()
            try:
                if self.live is not None:
                    self._draw()
            finally:
                self.release()
