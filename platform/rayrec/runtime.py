"""Connecting to Ray: an existing cluster when RAY_ADDRESS (or ray.address) is set, else local."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray

import rayrec
from rayrec.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig | None = None) -> None:
    """Connect to Ray once per process; a no-op when already connected (jobs, tests, Serve)."""
    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # Job-submitted drivers and Serve replicas inherit RAY_ADDRESS; a laptop run starts Ray here.
    kwargs: dict = {"log_to_driver": True, "configure_logging": True, "logging_level": logging.WARNING}
    if address:
        # Ship this rayrec to the cluster's workers so every node runs the same code as the
        # driver, whether or not the cluster image has rayrec installed.
        runtime_env = None
        if os.environ.get("RAYREC_SHIP_CODE", "1") == "1":
            runtime_env = {"py_modules": [str(Path(rayrec.__file__).parent)]}
        ray.init(address=address, runtime_env=runtime_env, **kwargs)
    else:
        ray.init(
            address="local",  # a new local cluster, never another process's cluster on this host
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_memory,
            include_dashboard=False,
            **kwargs,
        )
    log.info("connected to Ray: %s", ray.cluster_resources())


class UserFacingError(RuntimeError):
    """An error whose message is meant for the person running the job (no traceback)."""


class ClusterResourceError(UserFacingError):
    """The Ray cluster lacks a resource the config asks for."""


def require_resources(needed: dict[str, float], what: str) -> None:
    """Fail fast, with a clear message, when the cluster cannot ever satisfy ``needed``."""
    available = ray.cluster_resources()
    missing = {k: v for k, v in needed.items() if v > 0 and available.get(k, 0.0) < v}
    if missing:
        have = {k: available.get(k, 0.0) for k in missing}
        raise ClusterResourceError(
            f"{what} needs {missing} but the Ray cluster only has {have} "
            f"(cluster total: CPU={available.get('CPU', 0)}, GPU={available.get('GPU', 0)}). "
            "Use a config for this cluster (e.g. train.use_gpu=false) or add nodes."
        )
