"""Exploration policies: propensities match selection frequencies; bandits learn."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from rayrec.explore.config import ExploreConfig
from rayrec.explore.policies import POLICIES, make_policy

SCORES = np.array([0.5, -0.3, 1.2, 0.0, 0.8])
FEATURES = np.random.default_rng(7).normal(size=(5, 3))


def _trained(name: str, cfg: ExploreConfig, seed: int):
    pol = make_policy(name, cfg, seed)
    rng = np.random.default_rng(123)
    for _ in range(20):  # the same learning history for every seed
        i = rng.integers(5, size=2)
        pol.update(i, rng.integers(0, 2, size=2).astype(float), FEATURES[i])
    return pol


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_propensities_match_empirical_slate_frequencies(name):
    cfg = ExploreConfig(epsilon=0.3, temperature=0.5, propensity_draws=300)
    pol = _trained(name, cfg, seed=0)
    n = 3000
    counts, probs = Counter(), {}
    for _ in range(n):
        slate = pol.select(SCORES, 2, FEATURES)
        assert len(set(slate.indices.tolist())) == 2
        assert np.all((slate.propensities > 0) & (slate.propensities <= 1))
        key = tuple(slate.indices.tolist())
        counts[key] += 1
        probs.setdefault(key, []).append(slate.probability)
    if pol.rule == "greedy" and not pol.sampled:
        assert len(counts) == 1 and probs[next(iter(counts))][0] == 1.0
    for key, c in counts.items():
        freq, p = c / n, float(np.mean(probs[key]))
        # exact policies: sampling error only; Thompson: plus Monte-Carlo propensity error
        tol = 4 * np.sqrt(p * (1 - p) / n) + (0.03 if pol.sampled else 1e-9)
        assert abs(freq - p) <= tol, (key, freq, p)
    # the same probabilities when asked for a given slate
    key = counts.most_common(1)[0][0]
    again = pol.propensities(SCORES, np.array(key), FEATURES)
    assert abs(np.prod(again) - np.mean(probs[key])) < (0.1 if pol.sampled else 1e-9)


def test_seeded_selection_is_reproducible():
    a = make_policy("thompson_beta", ExploreConfig(), seed=3).select(SCORES, 3)
    b = make_policy("thompson_beta", ExploreConfig(), seed=3).select(SCORES, 3)
    assert np.array_equal(a.indices, b.indices) and np.allclose(a.propensities, b.propensities)


# Stated bandit: 5 Bernoulli arms, p = 0.1, 0.25, 0.4, 0.55, 0.7, uninformative scores (0),
# one pull per round, 3000 rounds, 5 seeds; epsilon = 0.1, UCB c = 0.5.
ARM_P = np.array([0.1, 0.25, 0.4, 0.55, 0.7])


def _regret(name: str, seed: int, horizon: int = 3000) -> float:
    pol = make_policy(name, ExploreConfig(epsilon=0.1, ucb_c=0.5), seed)
    rng = np.random.default_rng(1000 + seed)
    regret, scores = 0.0, np.zeros(len(ARM_P))
    for _ in range(horizon):
        i = pol.select(scores, 1).indices
        pol.update(i, (rng.random(1) < ARM_P[i]).astype(float))
        regret += ARM_P.max() - ARM_P[i[0]]
    return regret


def test_ucb_and_thompson_beat_epsilon_greedy_and_greedy():
    mean = {n: np.mean([_regret(n, s) for s in range(5)])
            for n in ("greedy", "epsilon_greedy", "ucb1", "thompson_beta")}
    for good in ("ucb1", "thompson_beta"):
        for bad in ("greedy", "epsilon_greedy"):
            assert mean[good] < mean[bad], mean


@pytest.mark.parametrize("name", ["thompson_beta", "linucb", "thompson_gaussian"])
def test_state_dict_round_trip_reproduces_selection(name):
    cfg = ExploreConfig()
    a = _trained(name, cfg, seed=5)
    b = make_policy(name, cfg, seed=99)
    b.load_state_dict(a.state_dict())
    sa, sb = a.select(SCORES, 3, FEATURES), b.select(SCORES, 3, FEATURES)
    assert np.array_equal(sa.indices, sb.indices)
    with pytest.raises(ValueError, match="state is for policy"):
        make_policy("greedy", cfg).load_state_dict(a.state_dict())


def test_learning_uses_arm_ids_and_bad_input_is_rejected():
    pol = make_policy("greedy", ExploreConfig(prior_strength=1.0))
    arms = np.array([40, 7, 12])
    pol.update(np.array([12, 12, 12]), np.ones(3))
    assert arms[pol.select(np.zeros(3), 1, arms=arms).indices[0]] == 12
    with pytest.raises(ValueError, match="1-D"):
        pol.select(np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match="finite"):
        pol.select(np.array([0.0, np.nan]), 1)
    with pytest.raises(ValueError, match="needs candidate features"):
        make_policy("linucb").select(SCORES, 2)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope")
    assert len(pol.select(np.zeros(2), 5).indices) == 2  # k larger than the list: all of it
