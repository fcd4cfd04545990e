"""The Serve application: the deployments bound into one graph (ingress, retrieval, ranking,
and with ``serve.generation.enabled`` the causal LM's generation deployment).

``build_app(args)`` is the Serve import target (``rayrec.serving.app:build_app``)::

    serve run serve_configs/local.yaml
    # or: serve.run(build_app({"config": "configs/x.yaml", "serve.rank_timeout_s": 2}))

``app_config(cfg)`` is the same application as a declarative entry (what a `serve deploy`
file lists); deploying and switching it is :mod:`rayrec.serving.control`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from rayrec.config import RayrecConfig, load_config
from rayrec.serving.catalog import catalog_dir
from rayrec.serving.generation import GenerationDeployment
from rayrec.serving.ingress import RecommenderIngress
from rayrec.serving.ranking import RankingDeployment
from rayrec.serving.retrieval import RetrievalDeployment

log = logging.getLogger("rayrec")


def _absolute_dirs(cfg: RayrecConfig) -> RayrecConfig:
    """Pin every artifact dir to an absolute path now: replicas run with another cwd."""
    return cfg.model_copy(update={
        "run_dir": cfg.path(),
        "data": cfg.data.model_copy(update={"out": cfg.data_dir}),
        "train": cfg.train.model_copy(update={"storage_path": cfg.checkpoint_dir}),
        "retrieval": cfg.retrieval.model_copy(update={"out": cfg.index_dir}),
        "retriever": cfg.retriever.model_copy(update={"out": cfg.retriever_dir}),
        "serve": cfg.serve.model_copy(update={"event_log": cfg.event_log_dir, "catalog": catalog_dir(cfg)}),
        "tower": cfg.tower.model_copy(update={"out": cfg.tower_dir}),
        "explore": cfg.explore.model_copy(update={"out": cfg.explore_dir}),
    })


def ranking_start_replicas(cfg: RayrecConfig) -> int:
    """Ranking replicas at start-up: autoscaling's minimum, but never zero (the first request
    must not wait for a replica to start)."""
    return max(cfg.serve.ranking.autoscaling.min_replicas, 1)


def compose(cfg: RayrecConfig, fault_injection: dict[str, Any] | None = None):
    """Bind the deployments with the options from ``cfg.serve``."""
    cfg = _absolute_dirs(cfg)
    sc, rc = cfg.serve, cfg.serve.ranking
    shared = cfg.model_dump(mode="json")
    # The adapter lives only in the ranking user_config, so switching it is an in-place
    # reconfigure of the ranking replicas rather than a redeploy of the whole app.
    shared["serve"]["checkpoint"] = None
    a = rc.autoscaling
    autoscaling = {
        "min_replicas": a.min_replicas, "max_replicas": max(a.max_replicas, a.min_replicas),
        "initial_replicas": ranking_start_replicas(cfg),
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s, "downscale_delay_s": a.downscale_delay_s,
        "metrics_interval_s": min(2.0, max(0.5, a.upscale_delay_s)),
        "look_back_period_s": max(2.0, min(10.0, a.upscale_delay_s * 2)),
    }
    ranking = RankingDeployment.options(
        ray_actor_options={"num_cpus": rc.num_cpus, "num_gpus": rc.num_gpus},
        autoscaling_config=autoscaling,
        max_ongoing_requests=rc.max_ongoing_requests,
        max_queued_requests=rc.max_queued_requests,
        user_config={"checkpoint": sc.checkpoint, "fault_injection": fault_injection or {}},
        health_check_timeout_s=60,
    ).bind(shared)
    generation = build_generation(cfg, shared)
    retrieval = RetrievalDeployment.options(
        num_replicas=sc.retrieval_replicas, ray_actor_options={"num_cpus": sc.retrieval_num_cpus},
        max_ongoing_requests=sc.retrieval_max_ongoing_requests,
    ).bind(shared, generation)
    return RecommenderIngress.options(
        num_replicas=sc.ingress_replicas, ray_actor_options={"num_cpus": sc.ingress_num_cpus},
        max_ongoing_requests=sc.ingress_max_ongoing_requests,
        max_queued_requests=sc.ingress_max_queued_requests,
    ).bind(shared, retrieval, ranking, generation)


def build_generation(cfg: RayrecConfig, shared: dict[str, Any]):
    """The generation deployment, bound, or None when ``serve.generation`` is off."""
    gc = cfg.serve.generation
    if not gc.enabled:
        return None
    return GenerationDeployment.options(
        num_replicas=gc.replicas, ray_actor_options={"num_cpus": gc.num_cpus, "num_gpus": gc.num_gpus},
        max_ongoing_requests=gc.max_ongoing_requests, health_check_timeout_s=120,
    ).bind(shared)


def app_resources(cfg: RayrecConfig) -> dict[str, float]:
    """CPUs and GPUs the app's replicas reserve at start-up (the state actors take none): what
    ``rayrec serve`` checks the cluster can ever hold before it waits on a deployment."""
    sc, rc, gc = cfg.serve, cfg.serve.ranking, cfg.serve.generation
    ranking = ranking_start_replicas(cfg)
    cpus = (ranking * rc.num_cpus + sc.retrieval_replicas * sc.retrieval_num_cpus
            + sc.ingress_replicas * sc.ingress_num_cpus + (gc.replicas * gc.num_cpus if gc.enabled else 0))
    gpus = ranking * rc.num_gpus + (gc.replicas * gc.num_gpus if gc.enabled else 0)
    return {"CPU": round(cpus, 4), "GPU": round(gpus, 4)}


def build_app(args: dict[str, Any] | None = None):
    """Serve import target. ``args``: ``config`` (YAML path), dotted overrides
    (``"serve.rank_timeout_s": 2`` or ``overrides: {...}``), and test-only ``fault_injection``."""
    args = dict(args or {})
    path = args.pop("config", None)
    fault = args.pop("fault_injection", None)
    overrides = dict(args.pop("overrides", None) or {})
    unknown = [k for k in args if "." not in k and k not in RayrecConfig.model_fields]
    if unknown:
        raise ValueError(f"unknown build_app args {unknown}: expected config, overrides, "
                         "fault_injection or dotted overrides like serve.max_k")
    overrides.update(args)
    return compose(load_config(path, overrides), fault_injection=fault)


APP_IMPORT_PATH = "rayrec.serving.app:build_app"
RANKING = "Ranking"  # the ranking deployment's name (its user_config holds the adapter)


def app_config(
    cfg: RayrecConfig, fault_injection: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The declarative Serve application for ``cfg`` (what a `serve deploy` file lists).

    The adapter (``serve.checkpoint``) lives only in the ranking user_config: changing it
    later reconfigures the ranking replicas in place (:func:`switch_adapter`).
    """
    overrides = _absolute_dirs(cfg).model_dump(mode="json")
    overrides["serve"]["checkpoint"] = None
    app: dict[str, Any] = {
        "name": cfg.serve.app_name, "route_prefix": cfg.serve.route_prefix,
        "import_path": APP_IMPORT_PATH, "args": {"overrides": overrides},
        "deployments": [{"name": RANKING, "user_config": {
            "checkpoint": cfg.serve.checkpoint, "fault_injection": fault_injection or {}}}],
    }
    runtime_env = _shipped_code(cfg.serve.app_config_secrets)
    if runtime_env:
        app["runtime_env"] = runtime_env
    return app


SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|CREDENTIAL|PRIVATE|(^|_)KEYS?($|_)", re.IGNORECASE)


def _shipped_code(allowed_secrets: list[str] = ()) -> dict[str, Any]:
    # Declarative apps do not inherit the driver's job runtime env: pass on the code that
    # init_ray / `ray job submit --working-dir` uploaded (already gcs:// URIs by now), and the
    # job's env_vars that are not secrets (e.g. AWS_ENDPOINT_URL of a remote run_dir). A Serve
    # app config is shown by the dashboard and `serve status`: secrets never go in it; the
    # replicas get credentials from the cluster (instance role, node env, a Kubernetes secret).
    import ray

    env = dict(ray.get_runtime_context().runtime_env or {})
    out = {k: env[k] for k in ("working_dir", "py_modules") if env.get(k)}
    env_vars = dict(env.get("env_vars") or {})
    secret = sorted(k for k in env_vars if SECRET_NAME.search(k) and k not in allowed_secrets)
    if secret:
        log.warning("not copied into the Serve app config (the dashboard shows it): %s; give the "
                    "cluster these credentials itself (instance role, node environment, a secret) "
                    "or list them in serve.app_config_secrets",
                    ", ".join(secret))
    public = {k: v for k, v in env_vars.items() if k not in secret}
    if public:
        out["env_vars"] = public
    return out

