"""Ray Train -> MLflow: the driver side logs what rank 0 reports, so workers need no MLflow.

A :class:`ray.train.UserCallback` runs in Ray Train's controller (on the driver's node) and
sees every ``ray.train.report`` of every worker; it logs worker 0's metrics to the job's run
at the step the loop reports (``step`` for the ranker, ``epoch`` for the retriever). Ray
Train's own ``setup_mlflow`` would do this inside the workers instead: each worker would
need the store (a local sqlite file is not on another node) and the loop MLflow code.
"""

from __future__ import annotations

from typing import Any

from ray.train import UserCallback

from rayrec.tracking.runs import TrackedRun


class ReportToMlflow(UserCallback):
    """Log rank 0's reported metrics at ``metrics[step_key]`` (non-numbers are skipped)."""

    def __init__(self, run: TrackedRun, step_key: str):
        self.run, self.step_key = run, step_key

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        rank0 = metrics[0] if metrics else {}
        if self.step_key in rank0:
            self.run.log_metrics({k: v for k, v in rank0.items() if k != self.step_key},
                                 step=int(rank0[self.step_key]))


def report_callbacks(run: TrackedRun, step_key: str) -> list[UserCallback]:
    """``RunConfig(callbacks=...)`` for a tracked run (none when tracking is off)."""
    return [ReportToMlflow(run, step_key)] if run.enabled else []
