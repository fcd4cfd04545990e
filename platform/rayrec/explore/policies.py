"""Exploration policies over a scored candidate list: the one implementation used by the
serving endpoint and the experiments.

A policy picks a slate of k candidates slot by slot (sequential selection without
replacement). At every slot it computes a *gain* for each remaining candidate from its
per-candidate value (optionally re-weighted for diversity, see ``diversity.py``) and a rule:

- greedy / ucb1 / linucb: argmax (deterministic, propensity 1);
- epsilon_greedy: with prob. epsilon uniform over the remaining, else the argmax;
- softmax: Plackett-Luce, p(i) ~ exp(gain_i / temperature) over the remaining;
- uniform: 1 / remaining;
- thompson_beta / thompson_gaussian / lin_thompson / neural_linear_ts: one posterior draw per
  request, then argmax.

**Propensity** (``Slate.propensities[j]``) = P(policy puts candidate ``indices[j]`` at slot j |
the picks at slots < j, the context). Their product is the probability of the whole ordered
slate, which is what ``ope.py`` uses as the slate importance weight. For Thompson sampling
it is a Monte-Carlo estimate over ``propensity_draws`` posterior draws: among the draws that
reproduce slots < j, the fraction that put the item at j, smoothed by one pseudo-draw spread
evenly over the free candidates, (hits + 1/free) / (matches + 1), so that it is never 0 and the
slot's propensities sum to 1. Cost: one vectorised top-k over the draws; with a
diversity re-ranker it is ``propensity_draws`` x k sequential gain steps per request, so keep
``propensity_draws`` small (20-50) when serving Thompson sampling + MMR/DPP.

**Values.** Two families:

- *Contextual, anchored to the model* (``ContextualPolicy``: greedy, epsilon_greedy, softmax,
  uniform, linucb, lin_thompson, neural_linear_ts): one Bayesian linear head
  (``linear.BayesLinearHead``) on the model's logit scale over x = [1, score, phi], phi the
  model's representation of (user, item) (``features.contextual_features``), whose prior mean
  is the model's score; clicks enter as the logistic model's working responses. With no
  feedback greedy serves the model's order exactly; feedback calibrates the score and teaches
  corrections in the representation, never a per-item count shared by all users. Without
  ``features`` phi is empty and feedback can only calibrate (order unchanged). New items also
  get an offset of their own (``linear.ItemEffects``), taught by their own clicks.
- *Context-free per-item baselines* (``ArmPolicy``: ucb1, thompson_beta, thompson_gaussian):
  each item id keeps (pulls n, reward sum s) over all users; value
  (s + m * prior(score)) / (n + m), m = ``prior_strength``, prior(score) = sigmoid(score) when
  ``score_is_logit``. Kept for the experiments as the classic baselines (Auer et al. 2002,
  Chapelle & Li 2011); they override a personalised score with a global click rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rayrec.explore.config import ExploreConfig
from rayrec.explore.diversity import make_gain
from rayrec.explore.linear import BayesLinearHead, ItemEffects


@dataclass
class Slate:
    """Chosen candidate positions (into the candidate list) and each slot's propensity."""

    indices: np.ndarray  # (k,) int64
    propensities: np.ndarray  # (k,) float64

    @property
    def probability(self) -> float:
        """Probability of the whole ordered slate."""
        return float(np.prod(self.propensities))


_P_MIN = 1e-3  # working responses of clicks: p clipped to [_P_MIN, 1 - _P_MIN]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def _flags(new: np.ndarray | None, n: int) -> np.ndarray:
    if new is None:
        return np.zeros(n, dtype=bool)
    f = np.asarray(new, dtype=bool).reshape(-1)
    if len(f) != n:
        raise ValueError(f"new has {len(f)} flags for {n} candidates")
    return f


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
    """Base: slot-by-slot selection with propensities; subclasses say what a candidate is worth
    (``values`` / ``_draws``) and learn from feedback (``update``)."""

    name = "policy"
    rule = "greedy"  # greedy | epsilon | softmax | uniform
    sampled = False  # values are a random posterior draw (Monte-Carlo propensities)
    needs_features = False

    def __init__(self, cfg: ExploreConfig, seed: int = 0):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.t = 0  # rounds with feedback
        self._emb: np.ndarray | None = None  # embeddings of the request being served
        self._new: np.ndarray | None = None  # which of its candidates are new items

    # ---- values (subclasses) ------------------------------------------------------------
    def values(self, scores, arms, features, rng) -> np.ndarray:
        """Per-candidate value the rule picks on (a posterior draw for sampled policies)."""
        raise NotImplementedError

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
        n = draws.shape[1]
        match = np.ones(len(tops), dtype=bool)
        props = np.empty(k)
        for j in range(k):  # (hits + 1/free) / (matches + 1): sums to 1 over the free candidates
            hit = match & (tops[:, j] == slate[j])
            props[j] = (hit.sum() + 1.0 / (n - j)) / (match.sum() + 1.0)
            match = hit
        return props

    def select(
        self, scores: np.ndarray, k: int, features: np.ndarray | None = None,
        arms: np.ndarray | None = None, embeddings: np.ndarray | None = None,
        new: np.ndarray | None = None, with_propensities: bool = True,
    ) -> Slate:
        """Choose a slate of k from the candidates.

        ``features`` (n, d): per-candidate features of the contextual policies; ``arms`` (n,):
        the candidates' item ids that per-arm statistics are kept under (default: positions);
        ``embeddings`` (n, e): item embeddings for diversity (default: ``features``); ``new``
        (n,): which candidates are new items (no interactions: text only). ``with_propensities``
        false skips the Monte-Carlo propensities of the sampled policies (NaN; same slate).
        """
        scores, k, features, arms = _check(scores, k, features, arms)
        self._emb = features if embeddings is None else np.asarray(embeddings, dtype=np.float64)
        self._new = _flags(new, len(scores))
        if self.needs_features and features is None:
            raise ValueError(f"policy {self.name!r} needs candidate features")
        values = self.values(scores, arms, features, self.rng)
        if self.sampled and not with_propensities:  # a simulation that logs no propensities
            return Slate(self._sequence(values, k, features, self.rng)[0], np.full(k, np.nan))
        if self.sampled:
            idx, _ = self._sequence(values, k, features, self.rng)
            draws = self._draws(scores, arms, features, self._n_draws(k), self.rng)
            return Slate(idx, self._mc_propensities(idx, scores, arms, features, draws))
        return Slate(*self._sequence(values, k, features, self.rng))

    def propensities(
        self, scores: np.ndarray, indices: np.ndarray, features: np.ndarray | None = None,
        arms: np.ndarray | None = None, embeddings: np.ndarray | None = None,
        rng: np.random.Generator | None = None, new: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per-slot propensities this policy (in its current state) gives a given slate."""
        scores, _, features, arms = _check(scores, len(indices), features, arms)
        self._emb = features if embeddings is None else np.asarray(embeddings, dtype=np.float64)
        self._new = _flags(new, len(scores))
        indices = np.asarray(indices, dtype=np.int64)
        rng = rng or np.random.default_rng(0)
        if self.sampled:
            draws = self._draws(scores, arms, features, self._n_draws(len(indices)), rng)
            return self._mc_propensities(indices, scores, arms, features, draws)
        values = self.values(scores, arms, features, rng)
        return self._sequence(values, len(indices), features, rng, forced=indices)[1]

    def _n_draws(self, k: int) -> int:
        """Posterior draws for the propensities: ``propensity_draws``, but with a diversity
        re-ranker each draw is k sequential gain steps, so at most ``max_propensity_steps`` / k
        (at least 8): one request's CPU is bounded by the config whatever its k."""
        if self.cfg.diversity == "none" or self.cfg.diversity_weight <= 0:
            return self.cfg.propensity_draws
        return max(8, min(self.cfg.propensity_draws, self.cfg.max_propensity_steps // max(k, 1)))

    # ---- learning -----------------------------------------------------------------------
    def update(
        self, arms: np.ndarray, rewards: np.ndarray, features: np.ndarray | None = None,
        scores: np.ndarray | None = None, new: np.ndarray | None = None,
    ) -> None:
        """Learn from the rewards of shown items (arm ids; their features, model scores, and
        which were new items)."""
        arms = np.asarray(arms, dtype=np.int64)
        rewards = np.asarray(rewards, dtype=np.float64)
        if arms.shape != rewards.shape or arms.ndim != 1:
            raise ValueError(f"arms {arms.shape} and rewards {rewards.shape} must be equal 1-D")
        if len(arms) and arms.min() < 0:
            raise ValueError("arm ids must be >= 0")
        if not np.all(np.isfinite(rewards)):
            raise ValueError("rewards must be finite")
        self._new = _flags(new, len(arms))
        self._learn(arms, rewards, features, scores)
        self.t += 1

    def _learn(self, arms, rewards, features, scores) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "t": self.t, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state is for policy {state.get('name')!r}, not {self.name!r}")
        self.t = int(state["t"])
        self.rng.bit_generator.state = state["rng"]


# ---- contextual policies, anchored to the model's score ------------------------------------

class ContextualPolicy(Policy):
    """Values from a Bayesian linear head over x = [1, score, phi] (``linear.py``), prior mean
    ``[0, explore.score_weight, 0...]``: with no feedback the order is the model's. New items
    add an offset of their own (``linear.ItemEffects``, prior sd ``explore.new_item_sd``) that
    their own feedback teaches; items with interactions have none."""

    def __init__(self, cfg: ExploreConfig, seed: int = 0):
        super().__init__(cfg, seed)
        self.head: BayesLinearHead | None = None
        self.items = ItemEffects(cfg.new_item_sd, cfg.max_item_effects)

    def _x(self, scores: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        s = np.asarray(scores, np.float64).reshape(-1, 1)
        phi = np.zeros((len(s), 0)) if features is None else np.asarray(features, np.float64)
        x = np.hstack([np.ones_like(s), s, phi])
        if self.head is None:
            c, d = self.cfg, phi.shape[1]
            self.head = BayesLinearHead(
                np.r_[0.0, c.score_weight, np.zeros(d)],
                np.r_[c.calibration_precision, c.score_weight_precision, np.full(d, c.ridge_lambda)],
                a0=c.noise_prior_a, b0=c.noise_prior_b)
        elif self.head.dim != x.shape[1]:
            raise ValueError(f"features have dim {x.shape[1] - 2}, the policy's head has {self.head.dim - 2}")
        return x

    def _monotone(self, theta: np.ndarray) -> np.ndarray:
        """The score's weight kept at or above ``min_score_weight``: feedback can calibrate the
        model's score but never turn it upside down (one client's clicks on the items the
        model ranks last would otherwise reverse every user's order)."""
        theta[..., 1] = np.maximum(theta[..., 1], self.cfg.min_score_weight)
        return theta

    def _mean_parts(self, x: np.ndarray, arms: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The posterior mean value per candidate, in its two parts: the head's x . theta and
        each new item's own offset (0 for the others)."""
        head = x @ self._monotone(self.head.mean)
        if not new.any():  # the common case: no offsets to look up, no noise estimate needed
            return head, np.zeros(len(x))
        return head, self.items.posterior(arms, new, self.head.noise_var)[0]

    def mean_and_variance(self, scores, features, arms=None, new=None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean value and its variance per candidate: the head's
        (E[sigma^2] x^T Lambda^-1 x) plus a new item's own offset's."""
        x = self._x(scores, features)
        arms = np.arange(len(x)) if arms is None else np.asarray(arms, np.int64)
        new = _flags(new, len(x))
        noise_var = self.head.noise_var
        d_mean, d_var = self.items.posterior(arms, new, noise_var)
        return x @ self._monotone(self.head.mean) + d_mean, noise_var * self.head.quadratic_form(x) + d_var

    def values(self, scores, arms, features, rng):
        head, offset = self._mean_parts(self._x(scores, features), arms, self._new)
        return head + offset

    def _draws(self, scores, arms, features, n_draws, rng):
        """Posterior draws of every candidate's value: theta from the head (``_scale``: NIG or a
        fixed sigma), each new item's offset from its own normal posterior."""
        x = self._x(scores, features)
        draws = self._monotone(self.head.sample_theta(n_draws, rng, self._scale())) @ x.T
        if self._new.any():
            d_mean, d_var = self.items.posterior(arms, self._new, self.head.noise_var)
            draws += d_mean + np.sqrt(d_var) * rng.standard_normal(draws.shape)
        return draws

    def _scale(self) -> float | None:
        return None

    def _learn(self, arms, rewards, features, scores):
        """One IRLS step of the logistic model at the current estimate (``linear.py``): clicks
        in [0, 1] become working responses in logits, weighted by p (1 - p)."""
        if scores is None:
            raise ValueError(f"policy {self.name!r} learns from the shown items' model scores")
        x = self._x(scores, features)
        head, offset = self._mean_parts(x, arms, self._new)
        p = np.clip(_sigmoid(head + offset), _P_MIN, 1 - _P_MIN)
        w = p * (1 - p)
        z = head + offset + (np.clip(rewards, 0.0, 1.0) - p) / w
        self.head.update(x, z - offset, w)  # backfitting: the head explains what offsets do not
        self.items.update(arms, self._new, z - head, w)

    def state_dict(self):
        head = None if self.head is None else self.head.state_dict()
        return {**super().state_dict(), "head": head, "items": self.items.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.head = None if state.get("head") is None else BayesLinearHead.from_state(state["head"])
        self.items.load_state_dict(state["items"])


class Greedy(ContextualPolicy):
    """The posterior mean's order: the model's order until feedback teaches otherwise."""

    name, rule = "greedy", "greedy"


class EpsilonGreedy(ContextualPolicy):
    name, rule = "epsilon_greedy", "epsilon"


class Softmax(ContextualPolicy):
    name, rule = "softmax", "softmax"


class Uniform(ContextualPolicy):
    name, rule = "uniform", "uniform"


class LinUCB(ContextualPolicy):
    """mean + alpha sqrt(E[sigma^2] x^T Lambda^-1 x) (Li et al. 2010, on the anchored head)."""

    name, needs_features = "linucb", True

    def values(self, scores, arms, features, rng):
        mean, var = self.mean_and_variance(scores, features, arms, self._new)
        return mean + self.cfg.linucb_alpha * np.sqrt(var)


class LinThompson(ContextualPolicy):
    """theta ~ N(mu_n, v^2 Lambda_n^-1), fixed v (Agrawal & Goyal 2013), one draw per request."""

    name, sampled, needs_features = "lin_thompson", True, True

    def _scale(self) -> float | None:
        return self.cfg.lin_thompson_v

    def values(self, scores, arms, features, rng):
        return self._draws(scores, arms, features, 1, rng)[0]


class NeuralLinearTS(LinThompson):
    """Neural-linear Thompson sampling (Riquelme et al. 2018): sigma^2 ~ InvGamma(a_n, b_n),
    theta | sigma^2 ~ N(mu_n, sigma^2 Lambda_n^-1), over the model's representation; a new
    item's extra prior variance comes from its text-only block of phi (``features.py``)."""

    name = "neural_linear_ts"

    def _scale(self) -> float | None:
        return None  # sigma^2 drawn from its posterior


# ---- context-free per-item baselines -----------------------------------------------------

class ArmPolicy(Policy):
    """Per item id (n pulls, s reward sum) over all users; value (s + m prior(score)) / (n + m)."""

    def __init__(self, cfg: ExploreConfig, seed: int = 0):
        super().__init__(cfg, seed)
        self.n = np.zeros(0)
        self.s = np.zeros(0)

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

    def values(self, scores, arms, features, rng):
        return self._mean(scores, arms)

    def _learn(self, arms, rewards, features, scores):
        self._grow(arms)
        np.add.at(self.n, arms, 1.0)
        np.add.at(self.s, arms, rewards)

    def state_dict(self):
        return {**super().state_dict(), "n": self.n.copy(), "s": self.s.copy()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        n, s = np.asarray(state["n"], np.float64), np.asarray(state["s"], np.float64)
        if n.shape != s.shape or n.ndim != 1:
            raise ValueError(f"per-item state: n {n.shape} and s {s.shape} must be equal 1-D")
        self.n, self.s = n, s


class UCB1(ArmPolicy):
    """Mean + c * sqrt(2 ln t / (n + m)) (Auer et al. 2002, with the score as prior pulls)."""

    name = "ucb1"

    def values(self, scores, arms, features, rng):
        n, _ = self._stats(arms)
        bonus = np.sqrt(2.0 * np.log(self.n.sum() + 2.0) / (n + self.cfg.prior_strength))
        return self._mean(scores, arms) + self.cfg.ucb_c * bonus


class ThompsonBeta(ArmPolicy):
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


class ThompsonGaussian(ArmPolicy):
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


POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (Greedy, EpsilonGreedy, Softmax, Uniform, UCB1, ThompsonBeta,
                        ThompsonGaussian, LinUCB, LinThompson, NeuralLinearTS)
}


def make_policy(name: str, cfg: ExploreConfig | None = None, seed: int = 0) -> Policy:
    """A fresh policy by name (see ``ExploreConfig.policies``), seeded for reproducibility."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name](cfg or ExploreConfig(), seed)
