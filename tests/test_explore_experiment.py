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
