"""Worker processes: rayrec's marked log lines (:func:`setup_worker_logging`, Ray's
``worker_process_setup_hook``) and, on the driver, turning Ray's forwarded worker output back
into log records (:func:`forward_worker_lines`)."""

from __future__ import annotations

import logging
import re
import sys

# Resolved by Ray in each worker; rayrec.console re-exports setup_worker_logging under this path.
WORKER_HOOK = "rayrec.console.setup_worker_logging"
WORKER_MARK = "[rayrec]"

_WORKER_LINE = re.compile(r"^\[rayrec\] (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)$")


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
