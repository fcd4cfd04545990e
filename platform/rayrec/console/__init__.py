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

Modules: ``progress_records`` (progress records), ``stages`` (stage events; holds the running
stage), ``worker`` (worker-side logging, forwarded worker lines), ``handler`` (the live terminal
line), ``session`` (one command's set-up; holds the active session). All re-exported here.
"""

from rayrec.console.handler import PROGRESS_EVERY_S, ConsoleHandler
from rayrec.console.progress_records import (
    PROGRESS,
    Progress,
    parse_progress,
    progress,
)
from rayrec.console.session import (
    RAY_LOGGERS,
    ConsoleSession,
    after_ray_init,
    close_console,
    is_quiet,
    setup_console,
)
from rayrec.console.stages import (
    STAGE,
    stage,
    stage_done,
    stage_failed,
    stage_reused,
    stage_start,
)
from rayrec.console.worker import (  # WORKER_HOOK names setup_worker_logging here
    WORKER_HOOK,
    WORKER_MARK,
    forward_worker_lines,
    setup_worker_logging,
)

# The running stage (stages._current) and the active session (session._session) stay in their
# modules only: a copy here would go stale.
__all__ = [
    "PROGRESS",
    "PROGRESS_EVERY_S",
    "RAY_LOGGERS",
    "STAGE",
    "WORKER_HOOK",
    "WORKER_MARK",
    "ConsoleHandler",
    "ConsoleSession",
    "Progress",
    "after_ray_init",
    "close_console",
    "forward_worker_lines",
    "is_quiet",
    "parse_progress",
    "progress",
    "setup_console",
    "setup_worker_logging",
    "stage",
    "stage_done",
    "stage_failed",
    "stage_reused",
    "stage_start",
]
