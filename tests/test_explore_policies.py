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
        pol.update(i, rng.integers(0, 2, size=2).astype(float), FEATURES[i], SCORES[i])
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
        pol.update(i, (rng.random(1) < ARM_P[i]).astype(float), None, scores[i])
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


def test_per_item_baselines_learn_by_arm_id_and_bad_input_is_rejected():
    pol = make_policy("ucb1", ExploreConfig(prior_strength=1.0, ucb_c=0.0))
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


def test_greedy_serves_the_model_order_and_per_item_clicks_do_not_override_it():
    """The contextual greedy ranks by the model's score with no feedback, and one item's clicks
    (no features: nothing relates it to the others) leave every other user's order as it was."""
    scores = np.array([2.0, 1.0, 0.5, -1.0])
    pol = make_policy("greedy", ExploreConfig())
    assert pol.select(scores, 4).indices.tolist() == [0, 1, 2, 3]
    for _ in range(50):  # item 3 clicked, item 0 never: a per-item count would swap them
        pol.update(np.array([3, 0]), np.array([1.0, 0.0]), None, scores[[3, 0]])
    assert pol.select(scores, 4).indices.tolist() == [0, 1, 2, 3]


def test_posterior_matches_the_closed_form():
    """The head's sequential updates equal the batch NIG posterior (module docstring of linear.py)."""
    from rayrec.explore.linear import BayesLinearHead

    rng = np.random.default_rng(0)
    d, n = 4, 300
    X = rng.normal(size=(n, d))
    y = X @ np.array([0.5, -1.0, 0.2, 0.0]) + 0.3 * rng.normal(size=n)
    mu0, lam0, a0, b0 = np.array([0.0, 1.0, 0.0, 0.0]), np.array([1.0, 2.0, 3.0, 4.0]), 2.0, 0.5
    head = BayesLinearHead(mu0, lam0, a0, b0)
    for i in range(0, n, 7):
        head.update(X[i:i + 7], y[i:i + 7])
    L0 = np.diag(lam0)
    Ln = L0 + X.T @ X
    mun = np.linalg.solve(Ln, L0 @ mu0 + X.T @ y)
    an = a0 + n / 2
    bn = b0 + 0.5 * (y @ y + mu0 @ L0 @ mu0 - mun @ Ln @ mun)
    assert np.allclose(head.mean, mun, atol=1e-8)
    assert np.allclose(head.cov, np.linalg.inv(Ln), atol=1e-8)
    assert np.isclose(head.a, an) and np.isclose(head.b, bn, rtol=1e-8)
    # and its draws have that posterior's moments: E[theta] = mu_n, Cov = b/(a-1) Lambda_n^-1
    draws = head.sample_theta(40000, np.random.default_rng(1))
    assert np.allclose(draws.mean(0), mun, atol=0.01)
    assert np.allclose(np.cov(draws.T), bn / (an - 1) * np.linalg.inv(Ln), atol=2e-4)


@pytest.mark.parametrize("name", ["neural_linear_ts", "lin_thompson", "epsilon_greedy", "softmax"])
def test_propensities_sum_to_one_per_slot(name):
    """Over every candidate that could fill slot j (given the picks before it), the slot's
    propensities sum to 1: exact rules by enumeration, Thompson sampling by its Monte-Carlo
    estimate over the same draws."""
    from rayrec.explore.features import contextual_features

    rng = np.random.default_rng(3)
    feats = contextual_features(rng.normal(size=(6, 8)), rng.normal(size=8), [0, 0, 1, 0, 1, 0], dim=4)
    scores = rng.normal(size=6)
    cfg = ExploreConfig(epsilon=0.2, temperature=0.5, propensity_draws=100, feature_dim=4)
    pol = make_policy(name, cfg, seed=0)
    prefix = pol.select(scores, 2, feats).indices[:1]
    total = 0.0
    for c in range(6):
        if c in prefix:
            continue
        p = pol.propensities(scores, np.r_[prefix, c], feats, rng=np.random.default_rng(9))
        total += p[1]
    assert abs(total - 1.0) < 1e-9, total


def test_a_new_item_is_more_uncertain_than_an_equally_scored_old_one():
    from rayrec.explore.features import contextual_features

    rng = np.random.default_rng(4)
    vecs, user = rng.normal(size=(2, 8)), rng.normal(size=8)
    vecs[1] = vecs[0]  # the same vector and score; only item 1 is new
    feats = contextual_features(vecs, user, [False, True], dim=4)
    for name in ("neural_linear_ts", "linucb", "greedy"):
        pol = make_policy(name, ExploreConfig(feature_dim=4))
        mean, var = pol.mean_and_variance(np.zeros(2), feats, np.array([5, 6]), np.array([False, True]))
        assert np.isclose(mean[0], mean[1]) and var[1] > var[0] > 0, (name, var)
    # ... and the new item's own uncertainty shrinks as its feedback arrives
    pol = make_policy("neural_linear_ts", ExploreConfig(feature_dim=4))
    before = pol.mean_and_variance(np.zeros(2), feats, np.array([5, 6]), np.array([False, True]))[1][1]
    for _ in range(30):
        pol.update(np.array([6]), np.array([1.0]), feats[[1]], np.zeros(1), np.array([True]))
    after = pol.mean_and_variance(np.zeros(2), feats, np.array([5, 6]), np.array([False, True]))
    assert after[1][1] < before / 3 and after[0][1] > after[0][0]  # learned: it now leads


def test_memory_is_bounded_under_a_flood_of_new_items():
    pol = make_policy("neural_linear_ts", ExploreConfig(max_item_effects=100, feature_dim=2))
    feats = np.zeros((1, 5))
    for item in range(5000):
        pol.update(np.array([item]), np.array([0.0]), feats, np.zeros(1), np.array([True]))
    assert len(pol.items.stats) == 100 and pol.head.precision.shape == (7, 7)


def test_propensity_cost_is_bounded_by_the_config_whatever_k():
    """#23: with a diversity re-ranker each posterior draw is k gain steps; a k = 100 request
    gets max_propensity_steps / k draws, a k = 10 one all propensity_draws."""
    cfg = ExploreConfig(propensity_draws=200, max_propensity_steps=2000, diversity="mmr", diversity_weight=0.3)
    p = make_policy("lin_thompson", cfg, 0)
    assert p._n_draws(10) == 200 and p._n_draws(100) == 20 and p._n_draws(10_000) == 8
    assert make_policy("lin_thompson", cfg.model_copy(update={"diversity": "none"}), 0)._n_draws(100) == 200
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(150, 8))
    slate = p.select(rng.normal(size=150), 100, feats, np.arange(150))
    assert len(slate.indices) == 100 and np.all((slate.propensities > 0) & (slate.propensities <= 1))
