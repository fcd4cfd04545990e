"""Connecting to Ray: an existing cluster when RAY_ADDRESS (or ray.address) is set, else local."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray

import rayrec
from rayrec.config import RayConfig
from rayrec.errors import ClusterResourceError

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




def require_resources(needed: dict[str, float], what: str, hint: str | None = None) -> None:
    """Fail fast, with a clear message (``hint``: what to do instead), when the cluster cannot
    ever satisfy ``needed``."""
    available = ray.cluster_resources()
    missing = {k: v for k, v in needed.items() if v > 0 and available.get(k, 0.0) < v}
    if missing:
        have = {k: available.get(k, 0.0) for k in missing}
        raise ClusterResourceError(
            f"{what} needs {missing} but the Ray cluster only has {have} "
            f"(cluster total: CPU={available.get('CPU', 0)}, GPU={available.get('GPU', 0)}). "
            + (hint or "Use a config for this cluster (e.g. train.use_gpu=false) or add nodes.")
        )


def warn_if_busy(needed: dict[str, float], what: str) -> bool:
    """Warn (and return True) when ``needed`` does not fit what the cluster has free right now:
    the job then waits for resources (e.g. Serve replicas holding the CPUs) instead of failing."""
    free = ray.available_resources()
    short = {k: v for k, v in needed.items() if v > 0 and free.get(k, 0.0) < v}
    if short:
        log.warning(
            "%s needs %s but only %s is free on the Ray cluster now (the rest is in use, e.g. by "
            "a Serve app); it waits until that frees up. Add nodes, or lower the ask (e.g. "
            "train.resources_per_worker).", what, short, {k: free.get(k, 0.0) for k in short},
        )
    return bool(short)
