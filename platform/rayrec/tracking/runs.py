"""MLflow runs: the store, one run per job, what a run logs, and the active-run helpers."""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rayrec.storage import redact

log = logging.getLogger("rayrec.tracking")  # the package's logger: users filter on it

STORE_DIR = "mlruns"  # under run_dir: mlflow.db and artifacts/
# Unless the user set them: an unreachable server fails in seconds, not after minutes of
# retries, and MLflow's INFO lines (database migrations...) stay out of the job's console.
_MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
               "MLFLOW_LOGGING_LEVEL": "WARNING"}
_ACTIVE: list[TrackedRun] = []  # runs opened by start_run in this process, innermost last


def store_uri(cfg) -> tuple[str, str | None]:
    """The tracking URI and, for the default local store, where its artifacts go."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri, None  # the server decides where artifacts go
    if "://" in cfg.run_dir:
        raise ValueError(f"run_dir {cfg.run_dir} is remote: set tracking.tracking_uri to an MLflow server")
    root = Path(cfg.path(STORE_DIR))
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def metric_key(name: str) -> str:
    """An MLflow-legal name (letters, digits, ``_ - . / space``): ``ndcg@10`` -> ``ndcg_at_10``."""
    return re.sub(r"[^\w./\- ]", "_", name.replace("@", "_at_"))


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: ``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _client(uri: str):
    for var, value in _MLFLOW_ENV.items():
        os.environ.setdefault(var, value)
    from mlflow import (
        MlflowClient,  # deferred: tracking may be off, and mlflow takes seconds to import
    )

    return MlflowClient(tracking_uri=uri)


class TrackedRun:
    """One MLflow run, addressed by URI and run id: picklable, so Ray Train's controller can
    log to it. Every method is a no-op once the run is off (disabled, or after a failure)."""

    def __init__(self, uri: str | None = None, run_id: str | None = None, client=None):
        self.uri, self.run_id, self._client = uri, run_id, client

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "run_id": self.run_id, "_client": None}

    def _call(self, what: str, fn: Callable[[Any], Any]) -> None:
        if not self.enabled:
            return
        try:
            if self._client is None:
                self._client = _client(self.uri)
            fn(self._client)
        except Exception as e:  # tracking must never fail the job
            log.warning("MLflow tracking off for the rest of this job: %s at %s failed (%s: %s)",
                        what, self.uri, type(e).__name__, e)
            self.run_id = None

    def _batch(self, what: str, size: int, **entities: list) -> None:
        """``log_batch`` in chunks of ``size`` (MLflow's per-request limits)."""
        def send(c) -> None:
            for name, items in entities.items():
                for i in range(0, len(items), size):
                    c.log_batch(self.run_id, **{name: items[i : i + size]})
        self._call(what, send)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested params flattened to dotted keys; values as text (MLflow keeps 6000 chars)."""
        if not self.enabled:
            return
        from mlflow.entities import Param  # mlflow: deferred, as in _client

        items = [Param(metric_key(k), redact(str(v))[:6000]) for k, v in flatten(params).items()]
        self._batch("log params", 100, params=items)

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        """The finite numbers of ``metrics`` at ``step`` (others skipped)."""
        self.log_series({k: [v] for k, v in metrics.items()}, [step])

    def log_series(self, series: Mapping[str, Sequence[float]], steps: Sequence[int]) -> None:
        """Curves: ``series[name][j]`` at ``steps[j]``, sent in few requests."""
        if not self.enabled:
            return
        from mlflow.entities import Metric  # mlflow: deferred, as in _client

        ts = int(time.time() * 1000)
        items = [Metric(metric_key(name), float(v), ts, int(s))
                 for name, values in series.items() for v, s in zip(values, steps, strict=True)
                 if _is_finite_number(v)]
        self._batch("log metrics", 1000, metrics=items)

    def log_artifacts(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """A local file or directory (remote paths and missing ones are skipped)."""
        p = Path(path)
        if not self.enabled or "://" in str(path) or not p.exists():
            return
        if p.is_dir():
            self._call("log artifacts", lambda c: c.log_artifacts(self.run_id, str(p), artifact_path))
        else:
            self._call("log artifact", lambda c: c.log_artifact(self.run_id, str(p), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log text", lambda c: c.log_text(self.run_id, text, artifact_file))

    def log_model(self, model_dir: str, names: Sequence[str]) -> None:
        """The trained model's ``names`` (files or directories under ``model_dir``: its manifest,
        or the model itself with ``tracking.log_model``) under artifact ``model/``; the path
        goes in the tag ``rayrec.model``."""
        self._call("set tag", lambda c: c.set_tag(self.run_id, "rayrec.model", str(model_dir)))
        for name in names:
            self.log_artifacts(Path(model_dir) / name, "model")


@contextlib.contextmanager
def start_run(cfg, name: str, params: Mapping[str, Any] | None = None) -> Iterator[TrackedRun]:
    """Open a run named ``name`` (``tracking.enabled``: else a run that logs nothing), log
    ``params`` and the config, and close it FINISHED, or FAILED when the body raises."""
    run = TrackedRun()
    if cfg.tracking.enabled:
        uri = cfg.tracking.tracking_uri or "<run_dir>/mlruns"
        try:
            uri, artifacts = store_uri(cfg)
            client = _client(uri)
            exp = client.get_experiment_by_name(cfg.tracking.experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(
                cfg.tracking.experiment, artifact_location=artifacts)
            info = client.create_run(exp_id, run_name=name, tags={"rayrec.job": name,
                                                                  "rayrec.run_dir": redact(cfg.run_dir)})
            run = TrackedRun(uri, info.info.run_id, client)
        except Exception as e:  # tracking must never fail the job
            log.warning("MLflow tracking off for this job: cannot open a run at %s (%s: %s)",
                        uri, type(e).__name__, e)
    run.log_params(params or {})
    run.log_text(redact(cfg.to_yaml()), "rayrec_config.yaml")
    _ACTIVE.append(run)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        _ACTIVE.remove(run)
        run._call("end run", lambda c: c.set_terminated(run.run_id, status))


def active_run() -> TrackedRun:
    """The innermost run opened by :func:`start_run` in this process (one that logs nothing if none)."""
    return _ACTIVE[-1] if _ACTIVE else TrackedRun()


def log_metrics(metrics: Mapping[str, Any], step: int = 0) -> None:
    """Log to the active run."""
    active_run().log_metrics(metrics, step)


def log_artifacts(path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    """Log a file or directory to the active run."""
    active_run().log_artifacts(path, artifact_path)


def log_report(cfg, report_dir: str | os.PathLike[str], name: str = "report") -> None:
    """A finished report directory as artifacts under ``report/``: into the active run when
    one is open, else into a new run ``name`` (what the main job calls at its end)."""
    if _ACTIVE:
        active_run().log_artifacts(report_dir, "report")
        return
    with start_run(cfg, name) as run:
        run.log_artifacts(report_dir, "report")
