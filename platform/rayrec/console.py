"""What a person reads while rayrec runs: one line per stage, live progress, key figures, warnings.

Quiet by default: the terminal shows a line per stage (live, with progress and an ETA where there
is progress to show), the stage's key figures when it ends, rayrec's warnings and anyone's errors.
Everything else -- Ray's driver logs, C++ core-worker lines, Ray Data progress bars, the
stdout/stderr that Ray forwards from its workers -- goes to one file in Ray's session log
directory, printed once. ``--verbose`` keeps everything on the terminal, as Ray prints it.

Workers log through the ``rayrec`` logger with a ``[rayrec]`` mark (:func:`setup_worker_logging`,
installed as Ray's ``worker_process_setup_hook`` by :func:`rayrec.runtime.init_ray`); the driver
turns those forwarded lines back into log records and drops the rest (they stay in Ray's worker
log files). Progress, wherever it happens, is a :func:`progress` record: ``step 12/24 loss=2.1``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

PROGRESS = "rayrec.progress"  # the logger of progress records
STAGE = "rayrec.stage"  # the logger of stage start / end records
WORKER_HOOK = "rayrec.console.setup_worker_logging"
WORKER_MARK = "[rayrec]"
PROGRESS_EVERY_S = 30.0  # without a terminal (job logs, pipes): at most one progress line this often
RAY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune")

_WORKER_LINE = re.compile(r"^\[rayrec\] (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)$")
_PROGRESS_TEXT = re.compile(
    r"^(?P<what>.+?) (?P<done>\d+)/(?P<total>\d+)(?: \((?P<note>[^)]*)\))?(?P<figures>(?: \S+=\S+)*)$"
)
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# --- progress: the same record from the driver or a worker ---------------------------------

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


# --- worker processes --------------------------------------------------------------------

def setup_worker_logging() -> None:
    """Ray's worker_process_setup_hook: rayrec's loggers print INFO and up, marked so the
    driver's console keeps these lines out of everything a worker prints."""
    logger = logging.getLogger("rayrec")
    if any(getattr(h, "rayrec_mark", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.rayrec_mark = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(f"{WORKER_MARK} %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # Ray Train gives its workers a root handler too: print once


def forward_worker_lines(data: dict, ignore_prefix: bool = False) -> None:
    """Replaces Ray's printing of forwarded worker output on the driver (quiet mode): rayrec's
    marked lines become log records here; the rest stays in Ray's worker log files. The
    raylet's messages (e.g. "N worker processes started") go to the log file, except the
    out-of-memory kills, which a person must act on. (The signature is that of Ray's
    ``print_to_stdstream``, which it also stands in for.)"""
    for line in data.get("lines", []):
        if data.get("pid") == "raylet":
            level = logging.ERROR if "memory" in line.lower() else logging.INFO
            logging.getLogger("ray.raylet").log(level, "%s", line)
        elif m := _WORKER_LINE.match(line):
            logging.getLogger(m[2]).log(logging.getLevelName(m[1]), "%s", m[3])


# --- stages ------------------------------------------------------------------------------

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
    from rayrec.figures import key_figures

    stage = _current or _Stage("stage", "stage")
    seconds = time.perf_counter() - stage.started
    figures = key_figures(stage.name, result)
    _stage_record("end", f"{stage.label}: done in {seconds:.1f}s" + (f". {figures}" if figures else ""))
    _end()
    return seconds


def stage_reused(name: str, index: int | None, finished: str | None, result: Any = None) -> None:
    from rayrec.figures import key_figures

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


# --- the driver's terminal ---------------------------------------------------------------

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
        if record.levelno < logging.WARNING:
            return record.getMessage()
        source = "" if record.name.startswith("rayrec") else f" ({record.name})"
        return f"{record.levelname.lower()}{source}: {record.getMessage()}"

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


# --- the session: set up by the CLI, told about Ray by init_ray ----------------------------

class ConsoleSession:
    """The logging set-up of one ``rayrec`` command; :meth:`close` puts everything back."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.started_ray = False
        self.log_file: str | None = None
        self._undo: list = []
        self._stream: TextIO = sys.stderr
        self._term_fd: int | None = None
        self._console: ConsoleHandler | None = None
        self._file: logging.FileHandler | None = None

    # set-up before Ray
    def open(self) -> ConsoleSession:
        root = logging.getLogger()
        self._save_logger(root)
        if self.verbose:  # as before this module: everything, with times and logger names
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter(_FILE_FORMAT, datefmt="%H:%M:%S"))
            root.handlers, root.level = [handler], logging.DEBUG
            return self
        if sys.stderr is sys.__stderr__ and _fileno(sys.stderr) == 2:
            # The terminal is ours (a copy of fd 2): fd 2 itself later goes to the log file, so
            # whatever writes there directly (Ray's C++ core worker, stray handlers) is kept out.
            sys.stderr.flush()
            self._term_fd = os.dup(2)
            self._stream = os.fdopen(self._term_fd, "w", buffering=1, errors="replace", closefd=False)
        self._console = ConsoleHandler(self._stream)
        # Until Ray's session directory is known (or when the command never starts Ray), the
        # full log is a file in the temp directory; attach_ray moves it into the session's logs.
        self._open_log_file(os.path.join(tempfile.gettempdir(), f"rayrec-driver-{os.getpid()}.log"))
        root.level = logging.INFO
        logging.captureWarnings(True)
        self._undo.append(lambda: logging.captureWarnings(False))
        import ray  # noqa: F401  (importing Ray gives its loggers their stderr handlers: replace them)

        self._quiet_ray_loggers()
        return self

    # once Ray is up
    def attach_ray(self) -> None:
        """Ray is initialised: the log file in its session directory, worker lines filtered,
        Ray Data's progress bars off; print where the logs are."""
        self.started_ray = True
        if self.verbose:
            return
        import ray
        from ray.data import DataContext

        node = ray._private.worker._global_node
        logs = os.path.join(node.get_session_dir_path(), "logs") if node else tempfile.gettempdir()
        self._open_log_file(os.path.join(logs, f"rayrec-driver-{os.getpid()}.log"))
        self._quiet_ray_loggers()
        ctx = DataContext.get_current()
        bars = ctx.enable_progress_bars
        ctx.enable_progress_bars = False  # their redraws would fight the stage line
        self._undo.append(lambda: setattr(ctx, "enable_progress_bars", bars))
        self._filter_worker_lines()
        logging.getLogger("rayrec").info("full log: %s", self.log_file)
        self._say(f"Ray logs: {logs} (this run: {os.path.basename(self.log_file)}; --verbose prints them here)")

    def close(self) -> None:
        """Stop Ray if this command started it (its teardown lines go to the log file too), then
        restore logging, the worker-line printer and fd 2."""
        if self.started_ray and not self.verbose:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        if self._console is not None:
            self._console.close()
        if self._file is not None:
            self._file.close()
            if os.path.getsize(self.log_file) == 0:  # e.g. a bad flag: nothing worth keeping
                os.remove(self.log_file)
        if self._term_fd is not None:
            sys.stderr.flush()
            os.dup2(self._term_fd, 2)
            self._stream.close()
            os.close(self._term_fd)
            self._term_fd = None

    # helpers
    def _say(self, text: str) -> None:
        if self._console is not None:
            self._console.acquire()
            try:
                self._console._line(text)
            finally:
                self._console.release()

    def _save_logger(self, logger: logging.Logger) -> None:
        state = (list(logger.handlers), logger.level, logger.propagate)

        def undo() -> None:
            logger.handlers, logger.level, logger.propagate = list(state[0]), state[1], state[2]

        self._undo.append(undo)

    def _quiet_ray_loggers(self) -> None:
        """Ray's loggers print to stderr through their own handlers: send them to ours instead
        (the console shows their errors only; the log file everything)."""
        for name in RAY_LOGGERS:
            logger = logging.getLogger(name)
            terminal = [h for h in logger.handlers
                        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
            if terminal or not logger.propagate:
                self._save_logger(logger)
                logger.handlers = [h for h in logger.handlers if h not in terminal]
                logger.propagate = True

    def _open_log_file(self, path: str) -> None:
        """The full log (log records, and fd 2 when it is ours) goes to ``path`` from now on,
        after what the previous log file holds."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if self._file is not None:
            self._file.close()
            with open(self.log_file, "rb") as old, open(path, "ab") as new:
                shutil.copyfileobj(old, new)
            os.remove(self.log_file)
        self.log_file = path
        self._file = logging.FileHandler(path)
        self._file.setFormatter(logging.Formatter(_FILE_FORMAT))
        logging.getLogger().handlers = [self._console, self._file]
        if self._term_fd is not None:
            sys.stderr.flush()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 2)
            os.close(fd)

    def _filter_worker_lines(self) -> None:
        try:  # a private hook of Ray's (pinned version); without it, worker output prints as is
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        except ImportError:
            return
        original = [h for name, h in dispatcher.handlers if name == "ray_print_logs"]
        if not original:  # log_to_driver is off
            return
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", forward_worker_lines)  # ray.shutdown removes it
        # The raylet's messages to the driver are printed by this function, not the dispatcher.
        import ray._private.worker as ray_worker

        printer = ray_worker.print_to_stdstream
        ray_worker.print_to_stdstream = forward_worker_lines

        def undo() -> None:
            import ray

            ray_worker.print_to_stdstream = printer
            dispatcher.remove_handler("ray_print_logs")
            if ray.is_initialized():
                dispatcher.add_handler("ray_print_logs", original[0])

        self._undo.append(undo)


def _fileno(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


_session: ConsoleSession | None = None


def setup_console(verbose: bool = False) -> ConsoleSession:
    """Set up the console of one command (the CLI calls this); ``close()`` the result after."""
    global _session
    _session = ConsoleSession(verbose).open()
    return _session


def is_quiet() -> bool:
    return _session is not None and not _session.verbose


def after_ray_init() -> None:
    """Called by :func:`rayrec.runtime.init_ray` once it started or joined Ray."""
    if _session is not None:
        _session.attach_ray()


def close_console() -> None:
    global _session
    if _session is not None:
        _session.close()
        _session = None
