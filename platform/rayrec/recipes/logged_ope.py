"""Off-policy estimates from the endpoint's own event log, checked against the click model.

The serve stage's simulated traffic (:mod:`rayrec.recipes.traffic`) logs slates of a stochastic
policy with their propensities and clicks, and saves the greedy slate the endpoint would have
shown for each request with both slates' expected clicks. From the log alone, IPS and SNIPS
estimate the value (clicks per slate) of the logging policy and of greedy; the click model's
expected clicks are the true values reported beside them.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from rayrec import storage
from rayrec.config import RayrecConfig
from rayrec.explore.ope import evaluate, join_events
from rayrec.recipes.traffic import counterfactual_location
from rayrec.serving.eventlog import read_events


def estimate_from_event_log(cfg: RayrecConfig, n_boot: int = 200) -> dict[str, Any]:
    """IPS / SNIPS estimates, with bootstrap CIs, of the logging policy's and greedy's value.

    Target propensities follow the log's sequential convention (probability of the item at its
    slot given the earlier slots): greedy's is 1 when the logged slot holds the item greedy put
    there (its slate for the same request), else 0.
    """
    cf_location = counterfactual_location(cfg)
    if not storage.is_file(cf_location):
        raise FileNotFoundError(f"{cf_location} is missing: run the serve stage first")
    cf = json.loads(storage.read_text(cf_location))
    impressions, feedback = read_events(cfg.event_log_dir)
    shown = join_events(impressions, feedback)
    shown = shown[(shown["policy"] == cf["policy"]) & shown["request_id"].isin(cf["requests"])].copy()
    if shown.empty:
        raise RuntimeError(f"the event log at {cfg.event_log_dir} holds no {cf['policy']} impressions")
    shown = shown.sort_values(["request_id", "position"])
    greedy_at = {(rid, pos): item for rid, c in cf["requests"].items() for pos, item in enumerate(c["greedy"])}
    targets = {
        "logging": shown["propensity"].to_numpy(),
        "greedy": np.array([float(greedy_at.get((r, p)) == str(i)) for r, p, i in
                            zip(shown["request_id"], shown["position"], shown["item_id"], strict=True)]),
    }
    truth = {
        "logging": float(np.mean([c["logged_expected_clicks"] for c in cf["requests"].values()])),
        "greedy": float(np.mean([c["greedy_expected_clicks"] for c in cf["requests"].values()])),
    }
    results: dict[str, Any] = {"logging_policy": cf["policy"], "decisions": int(shown["request_id"].nunique())}
    for name, target in targets.items():
        est = evaluate(shown.assign(target_propensity=target), n_boot=n_boot, seed=0)
        results[name] = {"estimates": est, "true_value": truth.get(name)}
    return results
