"""Off-policy estimators on simulated logs whose true policy value is known."""

from __future__ import annotations

import pandas as pd
import pytest
from rayrec.data.config import SyntheticWorldConfig
from rayrec.data.schema import FEEDBACK_COLUMNS, IMPRESSION_COLUMNS
from rayrec.data.world import SyntheticWorld
from rayrec.explore import ope
from rayrec.explore.config import ExploreConfig
from rayrec.explore.environments import WorldEnv
from rayrec.explore.policies import make_policy


@pytest.fixture(scope="module")
def env():
    world = SyntheticWorld.generate(SyntheticWorldConfig(n_users=10, n_items=6, latent_dim=4, n_categories=3))
    return WorldEnv(world, 6, candidates="random", score_noise=1.0)


TARGET = ExploreConfig(epsilon=0.2)


@pytest.mark.slow  # many simulated runs (~5-9 s each)
@pytest.mark.parametrize("logging", ["uniform", "softmax"])
def test_every_estimator_covers_the_true_value(env, logging):
    target = make_policy("epsilon_greedy", TARGET, seed=1)
    truth = ope.true_value(env, target, 1, 2000, seed=11)
    log_pol = make_policy(logging, ExploreConfig(temperature=1.0), seed=2)
    shown, cands = ope.simulate_log(env, log_pol, 2000, 1, {"t": target}, seed=3)
    res = ope.evaluate(shown, "target_propensity_t", cands, "target_inclusion_t", n_boot=200, seed=0)
    assert set(res) == {"ips", "snips", "dm", "dr"}
    for name, r in res.items():
        assert r["lo"] <= truth <= r["hi"], (name, truth, r)
        assert r["hi"] - r["lo"] < 0.15
    # DR's correction makes it tighter than IPS here
    assert res["dr"]["se"] < res["ips"]["se"]


@pytest.mark.slow  # many simulated runs (~5-9 s each)
@pytest.mark.parametrize("logging,kwargs,seed", [("uniform", {}, 21), ("softmax", {"temperature": 1.0}, 22),
                                                 ("epsilon_greedy", {"epsilon": 0.6}, 23)])
def test_ips_and_dr_stay_unbiased_for_slates_as_logging_changes(env, logging, kwargs, seed):
    target = make_policy("softmax", ExploreConfig(temperature=0.3), seed=1)
    truth = ope.true_value(env, target, 2, 1000, seed=12)  # exact per request
    log_pol = make_policy(logging, ExploreConfig(**kwargs), seed=4)
    shown, cands = ope.simulate_log(env, log_pol, 1500, 2, {"t": target}, seed=seed)
    res = ope.evaluate(shown, "target_propensity_t", cands, "target_inclusion_t", n_boot=150, seed=1)
    for name in ("ips", "dr"):
        assert res[name]["lo"] <= truth <= res[name]["hi"], (logging, name, truth, res[name])


def test_clipping_bounds_weights_and_validation(env):
    target = make_policy("greedy", ExploreConfig(), seed=1)
    shown, _ = ope.simulate_log(env, make_policy("uniform", ExploreConfig(), 0), 400, 1, {"t": target}, seed=6)
    full = ope.evaluate(shown, "target_propensity_t", n_boot=20)
    clipped = ope.evaluate(shown, "target_propensity_t", clip=2.0, n_boot=20)
    assert set(full) == {"ips", "snips"}  # no candidates frame: no DM/DR
    assert clipped["ips"]["estimate"] <= full["ips"]["estimate"] / 3 + 1e-12
    bad = shown.assign(propensity=0.0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ope.evaluate(bad, "target_propensity_t")
    with pytest.raises(ValueError, match="lack columns"):
        ope.evaluate(shown.drop(columns=["reward"]), "target_propensity_t")


def test_join_events_fills_missing_feedback_with_zero():
    imp = pd.DataFrame({
        "request_id": ["a", "a", "b"], "timestamp": [1.0, 1.0, 2.0], "user_id": ["u", "u", "v"],
        "user_idx": [0, 0, 1], "policy": ["softmax"] * 3, "position": [0, 1, 0],
        "item_idx": [5, 6, 5], "item_id": ["5", "6", "5"], "score": [0.1, 0.2, 0.3],
        "propensity": [0.5, 0.5, 0.25], "n_candidates": [4, 4, 4], "degraded": [False] * 3,
    })[list(IMPRESSION_COLUMNS)]
    fb = pd.DataFrame({"request_id": ["a", "b", "b"], "timestamp": [3.0, 4.0, 5.0],
                       "item_idx": [6, 5, 5], "item_id": ["6", "5", "5"], "reward": [1.0, 1.0, 1.0]})
    joined = ope.join_events(imp, fb[list(FEEDBACK_COLUMNS)])
    assert joined["reward"].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="impressions lack"):
        ope.join_events(imp.drop(columns=["propensity"]), fb)
