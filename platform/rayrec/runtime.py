"""Connecting to Ray: an existing cluster when RAY_ADDRESS (or ray.address) is set, else local."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
from pathlib import Path

import ray

import rayrec
from rayrec import console
from rayrec.config import RayConfig, RayrecConfig
from rayrec.errors import ClusterResourceError, ConfigError

log = logging.getLogger(__name__)
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint
_SERVE_PLANE_VARS = ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_ENABLE_DIRECT_INGRESS")


def serve_data_plane_env(mode: str) -> dict[str, str]:
    """The environment that selects Ray Serve's data plane (``ray.serve_data_plane``); a Ray
    cluster reads it at start-up, so a local Ray started here gets it from this process.

    Measured on this 2-core machine (benchmarks/bench_serving.py, the same app): Serve's Python
    proxy alone costs ~7 ms a request where HAProxy costs ~1 ms, and gRPC between deployments
    ~2 ms less per hop (README, Serve overhead)."""
    if mode == "default":
        return {}
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    haproxy = shutil.which("haproxy")
    if mode == "haproxy" and haproxy is None:
        raise ConfigError("ray.serve_data_plane: 'haproxy' needs the haproxy binary on PATH "
                          "(e.g. apt-get install haproxy); 'auto' uses it when present, else 'grpc'")
    if mode in ("haproxy", "auto") and haproxy is not None:
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    else:  # no load balancer to reach the replicas' own ports: keep Serve's proxy on serve.port
        env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"
    return env


# A Ray that rayrec starts on one machine has no outside load balancer to wait for: Serve's
# proxies and direct-ingress replicas drain for 2 s instead of 30 before they stop (measured:
# `rayrec serve` stopped by SIGTERM in 7 s instead of 36 with HAProxy).
LOCAL_DRAIN_ENV = {"RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "2",
                   "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


@contextlib.contextmanager
def local_ray_env(mode: str):
    """Inside the block, ``os.environ`` holds the data plane's variables and the short local
    drain (those the user has not set): a local Ray started there passes them to its processes.
    After it, this process is as it was, since here they would switch its own Serve handles to a
    mode that needs a running event loop. Yields the variables added."""
    wanted = serve_data_plane_env(mode) | LOCAL_DRAIN_ENV
    extra = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(extra)
    try:
        yield extra
    finally:
        for key in extra:
            os.environ.pop(key, None)


def init_ray(cfg: RayConfig | None = None) -> None:
    """Connect to Ray once per process; a no-op when already connected (jobs, tests, Serve)."""
    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # Job-submitted drivers and Serve replicas inherit RAY_ADDRESS; a laptop run starts Ray here.
    # Quiet console: Ray's driver logs (INFO and up) go to the run's log file, not the terminal.
    level = logging.INFO if console.is_quiet() else logging.WARNING
    kwargs: dict = {"log_to_driver": True, "configure_logging": True, "logging_level": level}
    # Every worker marks rayrec's log lines, so the driver's console can keep just those.
    runtime_env: dict = {"worker_process_setup_hook": console.WORKER_HOOK}
    if address:
        # Ship this rayrec to the cluster's workers so every node runs the same code as the
        # driver, whether or not the cluster image has rayrec installed.
        if os.environ.get("RAYREC_SHIP_CODE", "1") == "1":
            runtime_env["py_modules"] = [str(Path(rayrec.__file__).parent)]
        context = ray.init(address=address, runtime_env=runtime_env, **kwargs)
    else:
        with local_ray_env(cfg.serve_data_plane) as plane:
            context = ray.init(
                address="local",  # a new local cluster, never another process's cluster on this host
                num_cpus=cfg.num_cpus,
                object_store_memory=cfg.object_store_memory,
                include_dashboard=cfg.include_dashboard,
                runtime_env=runtime_env,
                **kwargs,
            )
        plane = {**{k: v for k, v in os.environ.items() if k in _SERVE_PLANE_VARS}, **plane}
    console.after_ray_init(context.address_info.get("session_dir"))
    log.info("connected to Ray: %s; Serve data plane: %s", ray.cluster_resources(),
             "as the cluster was started" if address else plane or "Serve's defaults")


def dashboard_url() -> str | None:
    """The connected cluster's dashboard address (``host:port``), or None without one.

    ``ray.init(ignore_reinit_error=True)`` is the public way to read it once connected, but it
    also re-installs Ray's own SIGTERM handler (``sys.exit(15)``), which would cut short a clean
    shutdown (``rayrec serve``): the caller's handler is put back.
    """
    if not ray.is_initialized():
        return None
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        return ray.init(ignore_reinit_error=True).dashboard_url or None
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def submitted_job_working_dir() -> str | None:
    """The uploaded --working-dir when this process is a job's entrypoint (``ray job submit``):
    the job runs in Ray's copy of that directory, not where it was submitted from."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return runtime_env.get("working_dir")


def check_job_paths(cfg: RayrecConfig) -> None:
    """Inside a submitted job: fail at once on a relative ``data.path`` the job cannot see, and
    warn about a relative ``run_dir``.

    A relative path is resolved in the job's copy of --working-dir on the cluster, so
    ``../shared/data/...`` (outside the uploaded directory) points nowhere there, and results
    written under a relative run_dir go away with that copy.
    """
    if submitted_job_working_dir() is None:
        return
    if "://" not in cfg.run_dir and not os.path.isabs(os.path.expanduser(cfg.run_dir)):
        log.warning("run_dir %r is relative: this job writes its results into its copy of "
                    "--working-dir (%s), which Ray deletes later. Pass --out with an absolute path "
                    "on shared storage or an s3:// URI to keep them.", cfg.run_dir, os.getcwd())
    path = cfg.data.path
    if not path or "://" in path or os.path.isabs(os.path.expanduser(path)) or os.path.exists(path):
        return
    raise ConfigError(
        f"data.path {path!r} is relative, and a Ray job resolves it inside its copy of "
        f"--working-dir ({os.getcwd()}), where it does not exist: the job only sees the files "
        "under --working-dir. Give a location every node of the cluster can read: an absolute "
        "path on shared storage (--data /mnt/shared/ml-latest-small) or a URI "
        "(--data s3://bucket/ml-latest-small)."
    )


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a local Serve, dashboard or test
    server; another process may still take it before the caller binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
