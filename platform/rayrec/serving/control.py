"""The control plane: deploy the endpoint, switch its adapter in place, stop it, and
`rayrec serve`'s blocking run with a clean shutdown on Ctrl-C/SIGTERM.

Deployment is declarative, through Serve's REST API on the Ray dashboard (what `serve deploy`
and `serve status` use), so the ranking adapter can change later by a user_config update,
without a redeploy. A cluster without a dashboard (a local run, by default) gets the same app
imperatively (``serve.run``); it serves the same, but its adapter cannot be switched in place,
and :func:`switch_adapter` says so.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any

import ray
from ray import serve
from ray.dashboard.modules.serve.sdk import ServeSubmissionClient
from ray.serve.exceptions import RayServeException

from rayrec.config import RayrecConfig
from rayrec.errors import UserFacingError
from rayrec.explore.policies import POLICIES
from rayrec.runtime import dashboard_url
from rayrec.serving.app import RANKING, app_config, compose
from rayrec.serving.bandit import kill_state_actors

log = logging.getLogger(__name__)

NO_DASHBOARD = ("this Ray cluster runs without a dashboard, and Serve's declarative API (its REST "
                "API on the dashboard) needs one: start Ray with it (`ray start --head` does by "
                "default; locally set ray.include_dashboard=true) or set RAY_DASHBOARD_ADDRESS")


def serve_admin():
    """Serve's REST API client on the connected cluster's dashboard (``RAY_DASHBOARD_ADDRESS``
    when set, as for the `serve` CLI), or None when no dashboard answers."""
    address = os.environ.get("RAY_DASHBOARD_ADDRESS") or dashboard_url()
    if not address:
        return None
    if "://" not in address:
        address = f"http://{address}"
    try:
        return ServeSubmissionClient(address)
    except Exception as e:  # not reachable, or not a dashboard
        log.warning("the Ray dashboard at %s does not answer (%s): %s", address, e, NO_DASHBOARD)
        return None


def deploy_app(app: dict[str, Any], timeout_s: float = 600.0, admin=None) -> dict[str, Any]:
    """Apply one application declaratively, keeping the cluster's other declarative apps, and
    wait until it is RUNNING (raising with Serve's message when it fails to deploy); returns
    the Serve instance's details as last read (its ``http_options`` hold the running port)."""
    admin = admin or serve_admin()
    if admin is None:
        raise UserFacingError(f"cannot deploy Serve app {app['name']!r} declaratively: {NO_DASHBOARD}")
    details = admin.get_serve_details()
    apps = details["applications"]
    others = [a["deployed_app_config"] for name, a in apps.items()
              if name != app["name"] and a.get("deployed_app_config")]
    before = apps.get(app["name"], {}).get("last_deployed_time_s", -1.0)
    # The running instance's HTTP options, so the API has nothing to warn about.
    admin.deploy_applications({"http_options": details.get("http_options") or {},
                               "applications": [*others, app]})
    deadline = time.time() + timeout_s
    while True:
        details = admin.get_serve_details()
        now = details["applications"].get(app["name"])
        if now is not None and now["last_deployed_time_s"] != before:  # our config is applied
            if now["status"] == "RUNNING" and all(
                d["status"] == "HEALTHY" for d in now["deployments"].values()
            ):
                return details
            if now["status"] == "DEPLOY_FAILED":
                raise RuntimeError(f"Serve app {app['name']!r} failed to deploy: {now['message']}")
        if time.time() > deadline:
            raise TimeoutError(f"Serve app {app['name']!r} not running after {timeout_s:.0f}s: "
                               f"{now['message'] if now else 'not found'}")
        time.sleep(0.5)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_exposure(sc) -> None:
    """Refuse to bind beyond this machine without API keys (a safe default, not a warning)."""
    if sc.host not in LOOPBACK and not sc.require_api_key:
        raise UserFacingError(
            f"serve.host={sc.host} accepts connections from other machines, but "
            "serve.require_api_key is false: set serve.require_api_key=true and put the keys in "
            f"${sc.api_keys_env} (comma separated) or serve.api_keys_file, or bind serve.host=127.0.0.1")


def start_app(cfg: RayrecConfig, fault_injection: dict[str, Any] | None = None) -> str:
    """Deploy the endpoint on the connected Ray cluster (HTTP on serve.host:serve.port);
    returns its base URL. An already running Serve instance keeps its HTTP settings.

    Declarative (as `serve deploy` would) when the cluster has a dashboard, so the adapter can
    be switched later without a redeploy (:func:`switch_adapter`); otherwise ``serve.run``."""
    sc = cfg.serve
    check_exposure(sc)
    serve.start(http_options={"host": sc.host, "port": sc.port})
    admin = serve_admin()
    if admin is not None:
        details = deploy_app(app_config(cfg, fault_injection), admin=admin)
        port = (details.get("http_options") or {}).get("port", sc.port)
    else:
        log.info("Serve app %r deployed with serve.run: its adapter cannot be switched in place "
                 "(%s)", sc.app_name, NO_DASHBOARD)
        serve.run(compose(cfg, fault_injection), name=sc.app_name, route_prefix=sc.route_prefix)
        port = sc.port  # (a Serve instance started earlier with another port keeps that one)
    host = "127.0.0.1" if sc.host in ("0.0.0.0", "::") else sc.host
    return f"http://{host}:{port}{sc.route_prefix.rstrip('/')}"


def switch_adapter(cfg: RayrecConfig, checkpoint: str, timeout_s: float = 600.0) -> dict[str, Any]:
    """Switch the running app ``serve.app_name`` to ``checkpoint`` without dropping requests.

    Only the ranking deployment's user_config changes: each replica loads the new adapter
    beside the current one and swaps when it is ready, while requests keep flowing. Returns
    ``{"switched": bool, ...}``: False with the reason when there is no declaratively deployed
    app to switch (none running, or one deployed with ``serve.run``), or
    when the replicas could not load the adapter (they keep serving the current one).
    """
    name = cfg.serve.app_name
    admin = serve_admin()
    if admin is None:
        return {"switched": False, "reason": f"cannot switch Serve app {name!r} in place: {NO_DASHBOARD}"}
    try:
        apps = admin.get_serve_details()["applications"]
    except Exception as e:  # no Serve instance on this cluster
        return {"switched": False, "reason": f"no Serve instance on this Ray cluster ({e})"}
    if name not in apps:
        return {"switched": False, "reason": f"no Serve app {name!r} is running on this cluster"}
    app = apps[name].get("deployed_app_config")
    if not app:
        return {"switched": False, "reason": (
            f"Serve app {name!r} was deployed imperatively (serve.run, or `serve run` of an import "
            "path); deploy it from a config (`rayrec serve`, `serve deploy`/`serve run` of a YAML) "
            "to switch adapters in place")}
    app = json.loads(json.dumps(app))
    deployments = app.setdefault("deployments", [])
    ranking = next((d for d in deployments if d.get("name") == RANKING), None)
    if ranking is None:
        ranking = {"name": RANKING}
        deployments.append(ranking)
    previous = dict(ranking.get("user_config") or {})
    ranking["user_config"] = previous | {"checkpoint": checkpoint}
    t0 = time.time()
    deploy_app(app, timeout_s, admin=admin)
    result = {"app": name, "from": previous.get("checkpoint"), "to": checkpoint}
    # Confirm through the replicas themselves (a handle call reaches one replica at a time).
    handle = serve.get_deployment_handle(RANKING, app_name=name)
    replicas = max(1, apps[name]["deployments"].get(RANKING, {}).get("target_num_replicas", 1))
    confirmed, deadline = 0, time.time() + timeout_s
    while confirmed < 2 * replicas:
        info = handle.info.remote().result(timeout_s=60)
        if info.get("checkpoint") == checkpoint:
            confirmed += 1
            continue
        confirmed = 0
        if info.get("switch_error") and checkpoint in info["switch_error"]:
            return {"switched": False, "reason": info["switch_error"], **result}
        if time.time() > deadline:
            return {"switched": False, "reason": f"a replica still serves {info.get('checkpoint')}",
                    **result}
        time.sleep(0.2)
    return {"switched": True, "seconds": round(time.time() - t0, 2), **result}


def stop_app(cfg: RayrecConfig) -> None:
    """Delete the app (replicas shut down gracefully, flushing the event log), then persist
    and stop its shared policy-state actors."""
    try:
        serve.delete(cfg.serve.app_name)
    except RayServeException:  # Serve never started (stopped during startup): nothing to delete
        pass
    finally:
        kill_state_actors(cfg.serve.app_name, list(POLICIES))


def run_blocking(cfg: RayrecConfig) -> dict[str, Any]:
    """`rayrec serve`: deploy, print where, serve until Ctrl-C or SIGTERM, then shut down
    cleanly: the app is deleted (replicas flush their event logs), the policy states persisted,
    and, when this process started Ray itself, Serve and Ray are stopped (no agents left)."""
    def _stop(signum, frame):  # Ctrl-C and SIGTERM (kill, systemd, k8s) take one path
        # Ignore both before anything else: a second signal (a double Ctrl-C, or kill sent to
        # the process group) must not interrupt the shutdown that the first one starts.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    url = None
    try:  # a signal while the app is still starting takes the same clean path
        url = start_app(cfg)
        print(f"rayrec endpoint: {url}/recommend  (docs: {url}/docs, health: {url}/healthz)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping the rayrec endpoint...", flush=True)
    finally:
        for sig in previous:  # also when start_app failed without a signal
            signal.signal(sig, signal.SIG_IGN)
        try:
            stop_app(cfg)
        finally:
            _shutdown_local_ray(cfg)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return {"url": url, "event_log": cfg.event_log_dir}


def _shutdown_local_ray(cfg: RayrecConfig) -> None:
    """Stop Serve and Ray if this process started them (not when attached to a cluster)."""
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return  # a cluster's Serve outlives this client
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
