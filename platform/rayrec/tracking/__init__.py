"""Experiment tracking in MLflow: one run per job with its params, metric curves and artifacts.

Each job opens one run (``start_run``) in the experiment ``tracking.experiment`` and logs
  params     its config section(s), flattened (``train.lr``), and the whole config as an artifact;
  metrics    rank 0's ``ray.train.report`` per optimizer step / epoch (ranker / retriever
             training, from the driver side: :mod:`rayrec.tracking.train`), the mean curves
             per round (bandit experiments), the results (evaluation);
  artifacts  the job's report files and the trained model's manifest (the whole model dir
             with ``tracking.log_model``).
Runs of one config share metric names, so the MLflow UI overlays their curves as they are.

Store: ``tracking.tracking_uri`` (an MLflow server on a cluster), else
``sqlite:///<run_dir>/mlruns/mlflow.db`` with artifacts in ``<run_dir>/mlruns/artifacts``
(MLflow 3 keeps the ``file://`` store in maintenance mode and refuses to open it by default).

Tracking never fails a job: the first error (bad URI, server down, full disk) logs one
warning and turns that run's logging off; the job goes on. An unreachable server costs a
few seconds: HTTP retries default to 2 and the timeout to 10 s here (MLflow's own defaults
retry for minutes); ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``..._TIMEOUT`` set by the user win.
"""

from rayrec.tracking.runs import (
    TrackedRun,
    active_run,
    flatten,
    log_artifacts,
    log_metrics,
    log_report,
    metric_key,
    start_run,
    store_uri,
)

__all__ = ["TrackedRun", "active_run", "flatten", "log_artifacts", "log_metrics", "log_report",
           "metric_key", "start_run", "store_uri"]
