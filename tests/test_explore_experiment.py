"""End-to-end bandit experiments: synthetic world, semi-synthetic MovieLens, offline replay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rayrec.config import load_config
from rayrec.data.config import SyntheticWorldConfig
from rayrec.data.world import SyntheticWorld
from rayrec.explore.config import ExploreConfig
from rayrec.explore.environments import WorldEnv, replay, uniform_log
from rayrec.explore.experiment import run_experiment
from rayrec.explore.policies import make_policy

TINY_WORLD = {"data.synthetic.n_users": 60, "data.synthetic.n_items": 80}


def _check_report(result: dict, policies: list[str]) -> None:
    out = Path(result["files"]["json"]).parent
    for f in ("results.json", "curves.png", "report.md"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["policies"]) == policies
    report = (out / "report.md").read_text()
    for p in policies:
        assert f"| {p} |" in report
        s = saved["policies"][p]
        assert 0.0 <= s["ctr"]["mean"] <= 1.0 and 0 < s["catalog_coverage"]["mean"] <= 1.0


def test_synthetic_experiment_on_ray(ray_cluster, tmp_path):
    policies = ["greedy", "epsilon_greedy", "thompson_beta", "linucb"]
    cfg = load_config(None, {
        "run_dir": str(tmp_path), **TINY_WORLD, "explore.policies": policies,
        "explore.seeds": 2, "explore.horizon": 40, "explore.num_candidates": 20,
        "explore.slate_size": 3, "explore.diversity": "mmr", "explore.diversity_weight": 0.3,
    })
    result = run_experiment(cfg)
    _check_report(result, policies)
    reg = result["policies"]["greedy"]["cum_regret"]
    assert len(reg[0]) == 40 and np.all(np.diff(reg[0]) >= -1e-9)  # cumulative regret grows


@pytest.mark.slow  # MovieLens ratings, ~13 s
def test_semi_synthetic_movielens_experiment(ray_cluster, ml_latest_small, tmp_path):
    policies = ["greedy", "ucb1", "thompson_beta"]
    cfg = load_config(None, {
        "run_dir": str(tmp_path), "explore.environment": "semi_synthetic",
        "explore.ratings_path": str(ml_latest_small / "ratings.csv"), "explore.semi_synthetic_items": 200,
        "explore.policies": policies, "explore.seeds": 2, "explore.horizon": 30,
        "explore.num_candidates": 20, "explore.slate_size": 3,
    })
    result = run_experiment(cfg)
    _check_report(result, policies)
    assert result["click_model"]["n_items"] == 200 and result["click_model"]["train_logloss"] < 0.69
    assert result["policies"]["greedy"]["intra_list_diversity"]["mean"] > 0.05  # factors, not bias
    assert "Click model" in (tmp_path / "explore" / "report.md").read_text()


def test_replay_experiment_in_process(tmp_path):
    cfg = load_config(None, {
        "run_dir": str(tmp_path), **TINY_WORLD, "explore.environment": "replay",
        "explore.policies": ["uniform", "thompson_beta"], "explore.seeds": 2, "explore.horizon": 30,
        "explore.replay_candidates": 5, "explore.parallel": False,
    })
    result = run_experiment(cfg)
    _check_report(result, ["uniform", "thompson_beta"])
    assert result["policies"]["uniform"]["replay_matches"] > 0


def test_replay_of_a_fixed_policy_is_unbiased():
    world = SyntheticWorld.generate(SyntheticWorldConfig(n_users=30, n_items=20, latent_dim=4))
    env = WorldEnv(world, 5, candidates="random")
    log = uniform_log(env, 6000, seed=0)
    # greedy with a huge prior never changes its mind: a fixed policy with a known value
    pol = make_policy("greedy", ExploreConfig(prior_strength=1e9))
    out = replay(pol, log)
    picked = [int(np.argmax(s)) for s in log["scores"]]
    truth = np.mean([env.world.click_probability(u, c[j])
                     for u, c, j in zip(log["user_idx"], log["candidates"], picked, strict=True)])
    se = np.sqrt(truth * (1 - truth) / out["matches"])
    assert out["matches"] > 900 and abs(out["ctr"] - truth) < 4 * se


def test_arrivals_world_releases_items_on_schedule_and_scores_them_from_text():
    """Items arrive at a constant rate over the first arrival_window of the horizon; before its
    release an item is never a candidate; a new item's model score is its text-only score,
    new_item_gap logits below what the model would give a known item, and only new items carry
    the new-item block of the features."""
    from rayrec.explore.arrivals import ArrivalsEnv

    world = SyntheticWorld.generate(SyntheticWorldConfig(n_users=50, n_items=100))
    env = ArrivalsEnv(world, 30, horizon=1000, arrival_fraction=0.2, arrival_window=0.5, new_item_gap=2.0,
                      text_noise=0.0, score_noise=0.0, features={"dim": 4})
    assert env.arriving.sum() == 20 and env.release[env.arriving].max() < 500
    assert (env.release[~env.arriving] == 0).all()
    rng = np.random.default_rng(0)
    for t in (0, 250, 999):
        req = env.request(rng, t)
        assert (env.release[req.arms] <= t).all()
        assert np.array_equal(req.is_new, env.arriving[req.arms])
        assert np.all(req.features[~req.is_new, 4:] == 0) and np.all(req.features[req.is_new, 4] > 0)
    req = env.request(np.random.default_rng(1), 999)
    truth = np.log(req.probs / (1 - req.probs))
    gap = truth - req.scores  # text_noise 0: only the missing item bias and the gap remain
    bias = world.item_bias[req.arms] - env.mean_bias
    assert np.allclose(gap[~req.is_new], 0, atol=1e-5)
    assert np.allclose(gap[req.is_new], 2.0 + bias[req.is_new], atol=1e-4)


def test_arrivals_experiment_neural_linear_ts_finds_the_new_items(tmp_path):
    """A short run of the arrivals experiment: the paired comparison against greedy is reported,
    and Thompson sampling on the model's representation shows new items that greedy does not."""
    policies = ["greedy", "neural_linear_ts"]
    cfg = load_config(None, {
        "run_dir": str(tmp_path), **TINY_WORLD, "explore.environment": "arrivals", "explore.policies": policies,
        "explore.seeds": 3, "explore.horizon": 300, "explore.num_candidates": 20, "explore.score_noise": 0.1,
        "explore.parallel": False,
    })
    result = run_experiment(cfg)
    _check_report(result, policies)
    p = result["policies"]
    assert p["greedy"]["new_impression_share"]["mean"] == 0.0
    assert p["neural_linear_ts"]["new_impression_share"]["mean"] > 0.05
    assert len(result["vs_greedy"]["neural_linear_ts"]["per_seed"]) == 3
    assert "rounds to first click" in Path(result["files"]["report"]).read_text()
