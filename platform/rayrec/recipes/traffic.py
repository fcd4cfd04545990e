"""Simulated clients against a running endpoint: sample requests, then logged traffic with clicks.

``serve_and_simulate`` starts the endpoint, sends one request of each kind (known user, text
query, exploration), one feedback and, with ``serve.generation.enabled``, a list the language
model generates for the same text query (catalog-constrained) and a known user's slate with
explanations (:func:`send_samples`: each answer with its client-measured latency), replays
``serve.simulate_requests`` users through the stochastic logging policy (on the index path,
never the language model) with clicks drawn from a click model, and stops the endpoint. For
each logged request it also asks for the greedy slate and saves it with both slates' expected
clicks (``<run_dir>/serve/counterfactual.json``): the ground truth that the off-policy
estimates from the event log (:mod:`rayrec.recipes.logged_ope`) are compared with.

Simulated traffic never touches what a real endpoint serves: it runs as an app of its own
(``<serve.app_name>_simulation`` at ``<serve.route_prefix>/simulation``) whose policies learn
into ``<run_dir>/serve/simulation/`` instead of the run's exploration state, which
``rayrec serve`` loads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rayrec import storage
from rayrec.config import RayrecConfig
from rayrec.console import progress
from rayrec.data import store
from rayrec.data.world import saved_world
from rayrec.errors import UserFacingError
from rayrec.report.sections import EXPLAINED_SAMPLE, GENERATED_SAMPLE
from rayrec.serving.control import start_app, stop_app

log = logging.getLogger("rayrec")

COUNTERFACTUAL_FILE = ("serve", "counterfactual.json")  # under run_dir


def counterfactual_location(cfg: RayrecConfig) -> str:
    return cfg.path(*COUNTERFACTUAL_FILE)


def simulation_config(cfg: RayrecConfig) -> RayrecConfig:
    """The config of the simulation's own endpoint: its own app name, route and policy state."""
    sc = cfg.serve
    return cfg.model_copy(update={
        "serve": sc.model_copy(update={"app_name": f"{sc.app_name}_simulation",
                                       "route_prefix": f"{sc.route_prefix.rstrip('/')}/simulation"}),
        "explore": cfg.explore.model_copy(update={"state_path": cfg.path("serve", "simulation", "bandit_state.npz")}),
    })


def serve_and_simulate(cfg: RayrecConfig, n_requests: int | None = None) -> dict[str, Any]:
    """Start the endpoint, send the sample requests, replay simulated traffic with feedback, stop.

    Feedback comes from the synthetic world's true click probabilities when the data is
    synthetic, else from the users' held-out items (a click when the shown item is one).
    """
    import httpx

    n_requests = cfg.serve.simulate_requests if n_requests is None else n_requests
    cfg = simulation_config(cfg)
    refuse_a_running_app(cfg.serve.app_name)
    url = start_app(cfg)
    samples: dict[str, Any] = {}
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            users = store.load_users(cfg.data_dir)
            samples = send_samples(cfg, http, str(users["user_id"].iloc[0]))
            traffic = simulate_traffic(cfg, http, users, n_requests)
    finally:
        stop_app(cfg)
    return {"url": url, "samples": samples, "traffic": traffic}


SAMPLE_QUERY = "funny space adventures for kids"


def send_samples(cfg: RayrecConfig, http, known: str) -> dict[str, Any]:
    """One answer of each kind the endpoint gives, each with ``client_ms`` (the round trip this
    client measured), by name: ``known_user``, ``new_user_query`` (the text index's answer to
    :data:`SAMPLE_QUERY`), ``exploration``, ``feedback`` and, with ``serve.generation.enabled``,
    ``generated_for_query`` (the language model's catalog titles for the same query, ranked:
    ``source: generative``) and ``explained_known_user`` (``explain: true``). Without the
    generation deployment those two hold ``skipped`` (why); a generation request the endpoint
    refuses holds ``error``: the report shows either, and the stage goes on."""
    samples: dict[str, Any] = {}
    samples["known_user"] = _post(http, "/recommend", {"user_id": known, "k": 5})
    # source "index" keeps this the text index's answer (with generation on, a new user's free
    # text defaults to serve.generation.new_user_text_source): generated_for_query is the LM's
    samples["new_user_query"] = _post(
        http, "/recommend", {"query": SAMPLE_QUERY, "k": 5, "source": "index"})
    samples["exploration"] = _post(
        http, "/recommend", {"user_id": known, "k": 5, "policy": "epsilon_greedy", "diversity": 0.3})
    first = samples["known_user"]["items"][0]["item_id"] if samples["known_user"].get("items") else None
    if first is not None:
        samples["feedback"] = _post(http, "/feedback", {
            "request_id": samples["known_user"]["request_id"], "item_id": first, "reward": 1.0})
    gc = cfg.serve.generation
    generation = [  # (name, request, the settings the report quotes)
        (GENERATED_SAMPLE, {"query": SAMPLE_QUERY, "k": 5, "source": "generative"},
         {"backbone", "adapter", "k", "beams", "timeout_s"}),
        (EXPLAINED_SAMPLE, {"user_id": known, "k": 5, "explain": True},
         {"backbone", "adapter", "explain_max_items", "explain_budget_ms"}),
    ]
    for name, body, settings in generation:
        sample = {"request": body, "settings": gc.model_dump(mode="json", include=settings)}
        if not gc.enabled:
            samples[name] = sample | {"skipped": "serve.generation.enabled is false"}
            continue
        try:
            samples[name] = sample | _post(http, "/recommend", body)
        except Exception as e:  # shown in the report; the traffic still runs
            log.warning("sample %s failed: %s", name, e)
            samples[name] = sample | {"error": str(e)[:500]}
    return samples


def refuse_a_running_app(name: str) -> None:
    """This job starts, fills and deletes its own app: one of that name already running is not
    its to replace (another run's simulation, or someone's endpoint on a shared cluster)."""
    from ray import serve

    try:
        running = name in serve.status().applications
    except Exception:  # no Serve on this cluster yet: nothing to collide with
        running = False
    if running:
        raise UserFacingError(
            f"a Serve app named {name!r} is already running on this cluster and this job did not start "
            f"it: the simulated traffic would replace it. Stop it (Ctrl-C on its `rayrec serve`, or "
            f"`serve shutdown`) or give this run another serve.app_name")


def _post(http, path: str, body: dict) -> dict:
    """The answer's JSON, with ``client_ms``: the round trip this client measured."""
    t0 = time.perf_counter()
    response = http.post(path, json=body)
    client_ms = (time.perf_counter() - t0) * 1000
    if response.status_code >= 400 or "json" not in response.headers.get("content-type", ""):
        raise RuntimeError(f"POST {path} {body} -> {response.status_code} after {client_ms:.0f} ms: "
                           f"{response.text[:500]}")
    out = response.json()
    log.info("POST %s %s -> %d in %.0f ms (%s)", path, body, response.status_code, client_ms,
             ", ".join(i["title"] for i in out.get("items", [])[:3]) or "ok")
    return {**out, "client_ms": round(client_ms, 1)}


def click_model(cfg: RayrecConfig, include_test_items: bool = True) -> Callable[[str, str], float]:
    """(user_id, item_id) -> click probability for simulated feedback: the synthetic world's
    truth, else a click on a user's held-out items (the validation item and, unless
    ``include_test_items`` is false, the test item) and 2% on anything else."""
    world = saved_world(cfg.data_dir)
    if world is not None:
        return lambda u, i: float(world.click_probability(int(u), int(i)))
    items = store.load_items(cfg.data_dir)
    hist = store.load_histories(cfg.data_dir)
    users = store.load_users(cfg.data_dir)
    raw_item = items["item_id"].astype(str).to_numpy()
    held_out: dict[str, set[str]] = {}
    for uid, v, t in zip(users.set_index("user_idx").loc[hist["user_idx"], "user_id"].astype(str),
                         hist["valid_item"], hist["test_item"], strict=True):
        held_out[uid] = {raw_item[x] for x in ((v, t) if include_test_items else (v,)) if x >= 0}
    return lambda u, i: 1.0 if str(i) in held_out.get(str(u), set()) else 0.02


def simulate_traffic(cfg: RayrecConfig, http, users, n_requests: int, policy: str | None = None,
                     with_counterfactual: bool = True, include_test_items: bool = True) -> dict[str, Any]:
    """Logged traffic for off-policy evaluation, and its latency and degraded counts.

    Each simulated user gets a slate from the logging policy (``serve.simulate_policy`` unless
    ``policy``; logged with its propensities; clicks drawn from the click model are posted as
    feedback) and, with ``with_counterfactual``, the greedy slate the same endpoint would have shown.
    """
    rng = np.random.default_rng(0)
    click_p = click_model(cfg, include_test_items)
    policy, k = policy or cfg.serve.simulate_policy, cfg.explore.slate_size
    shown = clicks = degraded = errors = 0
    latencies, counterfactual = [], {}
    for sent in range(n_requests):
        progress("requests", sent, n_requests)  # the console's live line
        uid = str(users["user_id"].iloc[rng.integers(len(users))])
        t0 = time.perf_counter()
        # source "index": the fast path, whatever serve.generation.default_source says (the LM's
        # seconds per request would stretch the simulation to minutes; the samples show it)
        r = http.post("/recommend", json={"user_id": uid, "k": k, "policy": policy, "source": "index"})
        latencies.append(time.perf_counter() - t0)
        if r.status_code != 200:
            errors += 1
            continue
        body = r.json()
        degraded += bool(body["degraded"])
        for item in body["items"]:
            shown += 1
            if rng.random() < click_p(uid, item["item_id"]):
                clicks += 1
                http.post("/feedback", json={"request_id": body["request_id"],
                                             "item_id": item["item_id"], "reward": 1.0})
        if not with_counterfactual:
            continue
        g = http.post("/recommend", json={"user_id": uid, "k": k, "policy": "greedy", "source": "index"})
        if g.status_code == 200:
            greedy_items = [i["item_id"] for i in g.json()["items"]]
            counterfactual[body["request_id"]] = {
                "greedy": greedy_items,
                "greedy_expected_clicks": float(sum(click_p(uid, i) for i in greedy_items)),
                "logged_expected_clicks": float(sum(click_p(uid, i["item_id"]) for i in body["items"])),
            }
    if with_counterfactual:
        storage.write_text(counterfactual_location(cfg), json.dumps({"policy": policy, "requests": counterfactual}))
    lat = np.asarray(latencies) * 1000
    return {"requests": n_requests, "policy": policy, "impressions": shown, "clicks": clicks,
            "ctr": clicks / max(shown, 1), "degraded": degraded, "errors": errors,
            "degraded_rate": degraded / max(n_requests - errors, 1),
            "latency_ms": {q: float(np.percentile(lat, int(q[1:]))) for q in ("p50", "p95", "p99")}
            if len(lat) else {}}
