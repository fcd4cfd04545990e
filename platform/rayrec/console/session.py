"""The console session of one command: set up by the CLI (:func:`setup_console`), told about
Ray by :func:`rayrec.runtime.init_ray` (:func:`after_ray_init`), undone by :func:`close_console`;
the one place that holds the active session."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from typing import Any, TextIO

from rayrec.console.handler import ConsoleHandler
from rayrec.console.worker import forward_worker_lines

RAY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune")

_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
    def attach_ray(self, session_dir: str | None) -> None:
        """Ray is initialised (``session_dir``: what ``ray.init`` reported): the log file in its
        session directory, worker lines filtered, Ray Data's progress bars off; print where the
        logs are."""
        self.started_ray = True
        if self.verbose:
            return
        from ray.data import DataContext  # Ray is up by now; console itself loads without it

        logs = os.path.join(session_dir, "logs") if session_dir else tempfile.gettempdir()
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
            import ray  # a session that never started Ray never loads it

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
        from rayrec.console.rayhooks import route_worker_output  # loads Ray: only once Ray is up

        undo = route_worker_output(forward_worker_lines)
        if undo is not None:
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


def after_ray_init(session_dir: str | None = None) -> None:
    """Called by :func:`rayrec.runtime.init_ray` once it started or joined Ray."""
    if _session is not None:
        _session.attach_ray(session_dir)


def close_console() -> None:
    global _session
    if _session is not None:
        _session.close()
        _session = None
