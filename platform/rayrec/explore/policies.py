"""Exploration policies over a scored candidate list: the one implementation used by the
serving endpoint and the experiments.

A policy picks a slate of k candidates slot by slot (sequential selection without
replacement). At every slot it computes a *gain* for each remaining candidate from its
per-candidate value (optionally re-weighted for diversity, see ``diversity.py``) and a rule:

- greedy / ucb1 / linucb: argmax (deterministic, propensity 1);
- epsilon_greedy: with prob. epsilon uniform over the remaining, else the argmax;
- softmax: Plackett-Luce, p(i) ~ exp(gain_i / temperature) over the remaining;
- uniform: 1 / remaining;
- thompson_beta / thompson_gaussian / lin_thompson: one posterior draw per request, then argmax.

**Propensity** (``Slate.propensities[j]``) = P(policy puts candidate ``indices[j]`` at slot j |
the picks at slots < j, the context). Their product is the probability of the whole ordered
slate, which is what ``ope.py`` uses as the slate importance weight. For Thompson sampling
it is a Monte-Carlo estimate over ``propensity_draws`` posterior draws plus the realised one
(so it is never 0): the fraction of draws that reproduce slots < j and put the item at j,
among those that reproduce slots < j. Cost: one vectorised top-k over the draws; with a
diversity re-ranker it is ``propensity_draws`` x k sequential gain steps per request, so keep
``propensity_draws`` small (20-50) when serving Thompson sampling + MMR/DPP.

**Values**: arms are item ids (``arms``; candidate positions when omitted). Each arm keeps
(pulls n, reward sum s). The value of a candidate blends its score with the observed rewards,
(s + m * prior(score)) / (n + m), m = ``prior_strength``; prior(score) = sigmoid(score) when
``score_is_logit``. Linear policies learn r ~ x.theta over ``features`` (ridge: A, b).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rayrec.explore.config import ExploreConfig
from rayrec.explore.diversity import make_gain


@dataclass
class Slate:
    """Chosen candidate positions (into the candidate list) and each slot's propensity."""

    indices: np.ndarray  # (k,) int64
    propensities: np.ndarray  # (k,) float64

    @property
    def probability(self) -> float:
        """Probability of the whole ordered slate."""
        return float(np.prod(self.propensities))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def _check(scores: np.ndarray, k: int, features: np.ndarray | None, arms: np.ndarray | None):
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if k < 1:
        raise ValueError(f"slate size k must be >= 1, got {k}")
    a = np.arange(len(s)) if arms is None else np.asarray(arms, dtype=np.int64)
    if a.shape != s.shape:
        raise ValueError(f"arms has shape {a.shape}, scores {s.shape}")
    if len(a) and a.min() < 0:
        raise ValueError("arm ids must be >= 0")
    f = None
    if features is not None:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or len(f) != len(s):
            raise ValueError(f"features must be (n_candidates, d) = ({len(s)}, d), got {f.shape}")
    return s, min(int(k), len(s)), f, a


class Policy:
    """Base: per-arm statistics, slot-by-slot selection, state_dict round trip."""

    name = "policy"
    rule = "greedy"  # greedy | epsilon | softmax | uniform
    sampled = False  # values are a random posterior draw (Monte-Carlo propensities)
    needs_features = False

    def __init__(self, cfg: ExploreConfig, seed: int = 0):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.n = np.zeros(0)
        self.s = np.zeros(0)
        self.t = 0  # rounds with feedback
        self._emb: np.ndarray | None = None  # embeddings of the request being served

    # ---- values -------------------------------------------------------------------------
    def _grow(self, arms: np.ndarray) -> None:
        need = int(arms.max()) + 1 if len(arms) else 0
        if need > len(self.n):
            self.n = np.concatenate([self.n, np.zeros(need - len(self.n))])
            self.s = np.concatenate([self.s, np.zeros(need - len(self.s))])

    def _stats(self, arms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._grow(arms)
        return self.n[arms], self.s[arms]

    def _prior(self, scores: np.ndarray) -> np.ndarray:
        return _sigmoid(scores) if self.cfg.score_is_logit else scores

    def _mean(self, scores, arms) -> np.ndarray:
        n, s = self._stats(arms)
        m = self.cfg.prior_strength
        return (s + m * self._prior(scores)) / (n + m)

    def values(self, scores, arms, features, rng) -> np.ndarray:
        """Per-candidate value the rule picks on (a posterior draw for sampled policies)."""
        return self._mean(scores, arms)

    def _draws(self, scores, arms, features, n_draws: int, rng) -> np.ndarray:
        """(n_draws, n) independent draws of ``values`` (sampled policies only)."""
        return np.stack([self.values(scores, arms, features, rng) for _ in range(n_draws)])

    # ---- selection ----------------------------------------------------------------------
    def _gain(self, features):
        return make_gain(self.cfg.diversity, self._emb, self.cfg.diversity_weight)

    def _slot_probs(self, g: np.ndarray, picked: np.ndarray) -> np.ndarray:
        free = ~picked
        p = np.zeros(len(g))
        if self.rule == "uniform":
            p[free] = 1.0 / free.sum()
        elif self.rule == "softmax":
            z = np.where(free, g / self.cfg.temperature, -np.inf)
            z = np.exp(z - z[free].max())
            p = z / z.sum()
        else:
            best = int(np.argmax(np.where(free, g, -np.inf)))
            eps = self.cfg.epsilon if self.rule == "epsilon" else 0.0
            p[free] = eps / free.sum()
            p[best] += 1.0 - eps
        return p

    def _sequence(self, values, k, features, rng, forced=None) -> tuple[np.ndarray, np.ndarray]:
        """Pick k slots (or score the ``forced`` slate): indices and per-slot propensities."""
        gain = self._gain(features)
        picked = np.zeros(len(values), dtype=bool)
        idx, prop = [], []
        for j in range(k):
            p = self._slot_probs(gain.gains(values), picked)
            if forced is not None:
                i = int(forced[j])
            elif self.rule == "greedy":
                i = int(np.argmax(p))
            else:
                i = int(rng.choice(len(p), p=p))
            idx.append(i)
            prop.append(p[i])
            picked[i] = True
            gain.add(i)
        return np.asarray(idx, dtype=np.int64), np.asarray(prop, dtype=np.float64)

    def _mc_propensities(self, slate, scores, arms, features, draws: np.ndarray) -> np.ndarray:
        """Per-slot conditional frequencies of ``slate`` over posterior draws (+ the realised)."""
        k = len(slate)
        if self.cfg.diversity == "none" or self.cfg.diversity_weight == 0.0:
            tops = np.argsort(-draws, axis=1, kind="stable")[:, :k]
        else:
            tops = np.stack([self._sequence(d, k, features, None, None)[0] for d in draws])
        tops = np.vstack([tops, slate[None, :]])
        match = np.ones(len(tops), dtype=bool)
        props = np.empty(k)
        for j in range(k):
            hit = match & (tops[:, j] == slate[j])
            props[j] = hit.sum() / match.sum()
            match = hit
        return props

    def select(
        self, scores: np.ndarray, k: int, features: np.ndarray | None = None,
        arms: np.ndarray | None = None, embeddings: np.ndarray | None = None,
    ) -> Slate:
        """Choose a slate of k from the candidates.

        ``features`` (n, d): per-candidate features of the linear policies; ``arms`` (n,): the
        candidates' item ids that per-arm statistics are kept under (default: positions);
        ``embeddings`` (n, e): item embeddings for diversity (default: ``features``).
        """
        scores, k, features, arms = _check(scores, k, features, arms)
        self._emb = features if embeddings is None else np.asarray(embeddings, dtype=np.float64)
        if self.needs_features and features is None:
            raise ValueError(f"policy {self.name!r} needs candidate features")
        values = self.values(scores, arms, features, self.rng)
        if self.sampled:
            idx, _ = self._sequence(values, k, features, self.rng)
            draws = self._draws(scores, arms, features, self.cfg.propensity_draws, self.rng)
            return Slate(idx, self._mc_propensities(idx, scores, arms, features, draws))
        return Slate(*self._sequence(values, k, features, self.rng))

    def propensities(
        self, scores: np.ndarray, indices: np.ndarray, features: np.ndarray | None = None,
        arms: np.ndarray | None = None, embeddings: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Per-slot propensities this policy (in its current state) gives a given slate."""
        scores, _, features, arms = _check(scores, len(indices), features, arms)
        self._emb = features if embeddings is None else np.asarray(embeddings, dtype=np.float64)
        indices = np.asarray(indices, dtype=np.int64)
        rng = rng or np.random.default_rng(0)
        if self.sampled:
            draws = self._draws(scores, arms, features, self.cfg.propensity_draws, rng)
            return self._mc_propensities(indices, scores, arms, features, draws)
        values = self.values(scores, arms, features, rng)
        return self._sequence(values, len(indices), features, rng, forced=indices)[1]

    # ---- learning -----------------------------------------------------------------------
    def update(
        self, arms: np.ndarray, rewards: np.ndarray, features: np.ndarray | None = None
    ) -> None:
        """Learn from the rewards of shown items (arm ids; features per shown item)."""
        arms = np.asarray(arms, dtype=np.int64)
        rewards = np.asarray(rewards, dtype=np.float64)
        if arms.shape != rewards.shape or arms.ndim != 1:
            raise ValueError(f"arms {arms.shape} and rewards {rewards.shape} must be equal 1-D")
        if len(arms) and arms.min() < 0:
            raise ValueError("arm ids must be >= 0")
        self._grow(arms)
        np.add.at(self.n, arms, 1.0)
        np.add.at(self.s, arms, rewards)
        self.t += 1

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n.copy(), "s": self.s.copy(), "t": self.t,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state is for policy {state.get('name')!r}, not {self.name!r}")
        self.n, self.s, self.t = np.asarray(state["n"]), np.asarray(state["s"]), int(state["t"])
        self.rng.bit_generator.state = state["rng"]


class Greedy(Policy):
    name, rule = "greedy", "greedy"


class EpsilonGreedy(Policy):
    name, rule = "epsilon_greedy", "epsilon"


class Softmax(Policy):
    name, rule = "softmax", "softmax"


class Uniform(Policy):
    name, rule = "uniform", "uniform"


class UCB1(Policy):
    """Mean + c * sqrt(2 ln t / (n + m)) (Auer et al. 2002, with the score as prior pulls)."""

    name = "ucb1"

    def values(self, scores, arms, features, rng):
        n, _ = self._stats(arms)
        bonus = np.sqrt(2.0 * np.log(self.n.sum() + 2.0) / (n + self.cfg.prior_strength))
        return self._mean(scores, arms) + self.cfg.ucb_c * bonus


class ThompsonBeta(Policy):
    """Beta-Bernoulli: theta_i ~ Beta(1 + s + m p0, 1 + n - s + m (1 - p0))."""

    name, sampled = "thompson_beta", True

    def _ab(self, scores, arms):
        n, s = self._stats(arms)
        p0, m = np.clip(self._prior(scores), 0, 1), self.cfg.prior_strength
        return 1.0 + s + m * p0, 1.0 + np.maximum(n - s, 0) + m * (1 - p0)

    def values(self, scores, arms, features, rng):
        return rng.beta(*self._ab(scores, arms))

    def _draws(self, scores, arms, features, n_draws, rng):
        a, b = self._ab(scores, arms)
        return rng.beta(a, b, size=(n_draws, len(a)))


class ThompsonGaussian(Policy):
    """Normal-Normal (ratings): prior N(score, sigma^2 / m), known noise sigma."""

    name, sampled = "thompson_gaussian", True

    def _post(self, scores, arms):
        n, s = self._stats(arms)
        m, sd = self.cfg.prior_strength, self.cfg.gaussian_noise
        return (s + m * scores) / (n + m), sd / np.sqrt(n + m)

    def values(self, scores, arms, features, rng):
        mu, sd = self._post(scores, arms)
        return rng.normal(mu, sd)

    def _draws(self, scores, arms, features, n_draws, rng):
        mu, sd = self._post(scores, arms)
        return rng.normal(mu, sd, size=(n_draws, len(mu)))


class _Linear(Policy):
    """Shared ridge regression r ~ x.theta: A = lambda I + sum x x^T, b = sum r x."""

    needs_features = True

    def __init__(self, cfg: ExploreConfig, seed: int = 0):
        super().__init__(cfg, seed)
        self.A_inv: np.ndarray | None = None
        self.b: np.ndarray | None = None
        self._chol: np.ndarray | None = None

    def _init(self, d: int) -> None:
        if self.A_inv is None:
            self.A_inv = np.eye(d) / self.cfg.ridge_lambda
            self.b = np.zeros(d)
        elif self.A_inv.shape[0] != d:
            raise ValueError(f"features have dim {d}, the linear model has {self.A_inv.shape[0]}")

    def _theta(self, d: int) -> np.ndarray:
        self._init(d)
        return self.A_inv @ self.b

    def update(self, arms, rewards, features=None):
        if features is None:
            raise ValueError(f"policy {self.name!r} needs the features of the shown items")
        x = np.asarray(features, dtype=np.float64)
        super().update(arms, rewards)
        if x.ndim != 2 or len(x) != len(np.atleast_1d(arms)):
            raise ValueError(f"features must be (n_shown, d), got {x.shape}")
        self._init(x.shape[1])
        for xi, ri in zip(x, np.asarray(rewards, dtype=np.float64), strict=True):
            ax = self.A_inv @ xi  # Sherman-Morrison rank-1 inverse update
            self.A_inv -= np.outer(ax, ax) / (1.0 + xi @ ax)
            self.b += ri * xi
        self._chol = None

    def state_dict(self):
        return {**super().state_dict(), "A_inv": self.A_inv, "b": self.b}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.A_inv, self.b, self._chol = state["A_inv"], state["b"], None


class LinUCB(_Linear):
    """x.theta + alpha sqrt(x^T A^-1 x) (Li et al. 2010, shared model)."""

    name = "linucb"

    def values(self, scores, arms, features, rng):
        theta = self._theta(features.shape[1])
        width = np.sqrt(np.einsum("nd,de,ne->n", features, self.A_inv, features))
        return features @ theta + self.cfg.linucb_alpha * width


class LinThompson(_Linear):
    """theta ~ N(A^-1 b, v^2 A^-1) (Agrawal & Goyal 2013), one draw per request."""

    name, sampled = "lin_thompson", True

    def _draws(self, scores, arms, features, n_draws, rng):
        theta = self._theta(features.shape[1])
        if self._chol is None:
            self._chol = np.linalg.cholesky(self.A_inv + 1e-12 * np.eye(len(theta)))
        z = rng.standard_normal((n_draws, len(theta)))
        thetas = theta + self.cfg.lin_thompson_v * z @ self._chol.T
        return thetas @ features.T

    def values(self, scores, arms, features, rng):
        return self._draws(scores, arms, features, 1, rng)[0]


POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (Greedy, EpsilonGreedy, Softmax, Uniform, UCB1, ThompsonBeta,
                        ThompsonGaussian, LinUCB, LinThompson)
}


def make_policy(name: str, cfg: ExploreConfig | None = None, seed: int = 0) -> Policy:
    """A fresh policy by name (see ``ExploreConfig.policies``), seeded for reproducibility."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name](cfg or ExploreConfig(), seed)
