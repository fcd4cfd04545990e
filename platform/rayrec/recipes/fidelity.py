"""Does the endpoint serve what evaluation measured? Its greedy top-k against `rayrec evaluate`.

``endpoint_vs_offline`` asks a running endpoint for each evaluated user's top-k with policy
``greedy`` and no diversity, and scores it against the user's held-out test item exactly as the
full-catalog evaluation scored the served system (``evaluate/per_user.parquet``: the
``retriever_ranker`` rows when ``serve.use_ranker``, else ``retriever``): same users, same
target, same history. The ratio of the two NDCG@k is what exploration state, stale copies or a
drifting index cost the model. ``measure_fidelity`` runs it before and after simulated traffic
with feedback that the policy then learns from (``benchmarks/bench_endpoint_fidelity.py``).
Nothing is learned while a measurement runs (its slates wait out the feedback window, as any
request's do); ``learn_now`` then has the state actor learn every waiting slate at once.
"""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import numpy as np
import pandas as pd

from rayrec import storage
from rayrec.config import RayrecConfig
from rayrec.data import store
from rayrec.evaluation.report import PER_USER_FILE
from rayrec.recipes.traffic import simulate_traffic
from rayrec.serving.bandit import learn_pending
from rayrec.serving.control import start_app, stop_app


def served_model(cfg: RayrecConfig, models: set[str]) -> str:
    """The evaluation row that matches what the endpoint serves."""
    for name in (["retriever_ranker"] if cfg.serve.use_ranker else []) + ["retriever"]:
        if name in models:
            return name
    raise ValueError(f"the evaluation has no row for the served system (models: {sorted(models)}); "
                     "run `rayrec evaluate` with a trained retriever first")


def endpoint_vs_offline(cfg: RayrecConfig, http, k: int = 10, max_users: int | None = None) -> dict[str, Any]:
    """NDCG@k of the endpoint's greedy answers and of the evaluation, on the same users.

    ``http``: an ``httpx.Client`` whose base URL is the endpoint's."""
    raw = storage.read_bytes(storage.join(cfg.eval_dir, PER_USER_FILE))
    per_user = pd.read_parquet(io.BytesIO(raw))
    model = served_model(cfg, set(per_user["model"]))
    rows = per_user[per_user["model"] == model].sort_values("user_idx")
    if max_users is not None:
        rows = rows.head(max_users)
    users = store.load_users(cfg.data_dir).set_index("user_idx")["user_id"].astype(str)
    target = store.load_histories(cfg.data_dir).set_index("user_idx")["test_item"]
    items = store.load_items(cfg.data_dir)
    idx_of = dict(zip(items["item_id"].astype(str), items["item_idx"].astype(int), strict=True))
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    online, offline, same, failed = [], [], 0, 0
    for row in rows.to_dict("records"):
        r = http.post("/recommend", json={"user_id": users[row["user_idx"]], "k": k, "policy": "greedy",
                                          "diversity": 0.0})
        if r.status_code != 200:
            failed += 1
            continue
        shown = [idx_of[i["item_id"]] for i in r.json()["items"]]
        t = int(target[row["user_idx"]])
        online.append(float(discount[shown.index(t)]) if t in shown else 0.0)
        offline.append(float(row[f"ndcg@{k}"]))
        same += shown == [int(i) for i in row["top"][:k]]
    on, off = float(np.mean(online)) if online else 0.0, float(np.mean(offline)) if offline else 0.0
    return {"model": model, "users": len(online), "failed": failed, f"endpoint_ndcg@{k}": on,
            f"offline_ndcg@{k}": off, "ratio": on / off if off > 0 else float("nan"),
            "same_top_k_share": same / max(len(online), 1)}


def learn_now(cfg: RayrecConfig, policies: tuple[str, ...] = ("greedy",)) -> None:
    """Let the endpoint's policy learn what it was sent: its state actor learns every slate
    awaiting feedback (as the feedback window closing would), then the replicas' copies sync."""
    learn_pending(cfg.serve.app_name, list(policies))
    time.sleep(2 * cfg.serve.policy_sync_s + 1.0)


def measure_fidelity(cfg: RayrecConfig, n_requests: int = 1000, k: int = 10,
                     max_users: int | None = None) -> dict[str, Any]:
    """Start the run's endpoint, measure its greedy answers against evaluation, send
    ``n_requests`` simulated greedy requests with feedback (clicks from the click model, never
    from the test items), let the policy learn them, measure again, stop the endpoint."""
    url = start_app(cfg)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            before = endpoint_vs_offline(cfg, http, k, max_users)
            t0 = time.perf_counter()
            traffic = simulate_traffic(cfg, http, store.load_users(cfg.data_dir), n_requests, policy="greedy",
                                       with_counterfactual=False, include_test_items=False)
            traffic["seconds"] = time.perf_counter() - t0
            learn_now(cfg)  # the traffic, and the measurement's own slates (no clicks), are learned
            after = endpoint_vs_offline(cfg, http, k, max_users)
    finally:
        stop_app(cfg)
    return {"before": before, "traffic": traffic, "after": after}
