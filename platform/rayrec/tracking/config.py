"""Config section for experiment tracking in MLflow (:mod:`rayrec.tracking`)."""

from __future__ import annotations

from pydantic import Field

from rayrec.configbase import Section


class TrackingConfig(Section):
    """Where training, evaluation and bandit jobs log their params, metric curves and artifacts."""

    enabled: bool = True
    # None: sqlite:///<run_dir>/mlruns/mlflow.db, artifacts in <run_dir>/mlruns/artifacts.
    # On a cluster: the tracking server, e.g. http://mlflow.internal:5000.
    tracking_uri: str | None = None
    experiment: str = Field("rayrec", min_length=1)  # runs of one config share it (and metric names)
    log_model: bool = False  # also copy the trained model dir (not just its manifest) into the run
