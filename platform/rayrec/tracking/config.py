"""Config section for experiment tracking in MLflow (:mod:`rayrec.tracking`)."""

from __future__ import annotations

from pydantic import Field

from rayrec.configbase import Section


class TrackingConfig(Section):
    """Where training, evaluation and bandit jobs log their params, metric curves and artifacts."""

    enabled: bool = Field(True, description="Log params, metrics and artifacts of jobs to MLflow.")
    # On a cluster: the tracking server, e.g. http://mlflow.internal:5000.
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; None: sqlite:///<run_dir>/mlruns/mlflow.db with artifacts in "
        "<run_dir>/mlruns/artifacts.",
    )
    experiment: str = Field(
        "rayrec", min_length=1,
        description="MLflow experiment name (runs of one config share it and its metric names).",
    )
    log_model: bool = Field(
        False,
        description="Also copy the trained model directory (not just its manifest) into the MLflow run.",
    )
