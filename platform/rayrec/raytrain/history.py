"""The training curve: every metrics row a run reports, kept beside its checkpoints.

Ray Train keeps the metrics of the checkpoints it keeps, not of every report.
:class:`MetricsHistory` (a Ray Train callback; it runs in the train controller) writes rank 0's
reports to ``history.json`` under the run's storage (local or remote), one row per step, so
the report can draw loss and validation metrics against steps. A resumed run continues the
file it finds.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ray.train import UserCallback

from rayrec import storage

HISTORY_FILE = "history.json"


def history_location(storage_path: str, run_name: str) -> str:
    """Where run ``run_name`` under ``storage_path`` keeps its curve."""
    return storage.join(storage_path, run_name, HISTORY_FILE)


def read_history(location: str) -> list[dict[str, Any]]:
    """The rows written so far (oldest first); [] when there are none."""
    try:
        return json.loads(storage.read_text(location))
    except (FileNotFoundError, ValueError):
        return []


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Numbers and strings only, finite (``-inf`` marks a checkpoint scored without validation)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, str | bool | int) or (isinstance(v, float) and math.isfinite(v))}


class MetricsHistory(UserCallback):
    """Appends each report's rank-0 metrics to ``location`` (rewritten whole: object stores
    cannot append)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.rows: list[dict[str, Any]] | None = None

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if not metrics:
            return
        if self.rows is None:
            self.rows = read_history(self.location)
        row = _plain(metrics[0])
        self.rows = [r for r in self.rows if r.get("step") != row.get("step")] + [row]
        storage.write_text(self.location, json.dumps(self.rows))
