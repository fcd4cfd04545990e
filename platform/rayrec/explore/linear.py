"""A Bayesian linear head anchored to the model: the posterior every contextual policy reads.

Model (weighted Normal-Inverse-Gamma linear regression, the "neural-linear" posterior of
Riquelme, Tucker & Snoek 2018, "Deep Bayesian Bandits Showdown"):

    y = x . theta + e / sqrt(w),  e ~ N(0, sigma^2)
    theta | sigma^2 ~ N(mu0, sigma^2 Lambda0^-1),   sigma^2 ~ InvGamma(a0, b0)

After n observations (X, y, weights W), in closed form:

    Lambda_n = Lambda0 + X^T W X
    mu_n     = Lambda_n^-1 (Lambda0 mu0 + X^T W y)
    a_n      = a0 + n / 2
    b_n      = b0 + (y^T W y + mu0^T Lambda0 mu0 - mu_n^T Lambda_n mu_n) / 2

The head keeps Lambda_n, its inverse (Sherman-Morrison per observation, re-inverted every
``_REINVERT`` updates against drift), eta = Lambda0 mu0 + X^T W y, y^T W y and n: O(d^2) memory
whatever the traffic.

**On the model's logit scale, anchored to the model.** The contextual policies
(``policies.ContextualPolicy``) regress on x = [1, score, phi...] with ``mu0 = [0, score_weight,
0...]``: with no feedback the posterior mean ranks candidates exactly by the model's score, so
greedy serves the model's order. Clicks are Bernoulli; each one enters as the logistic model's
working response (one IRLS step at the current estimate eta, as in the Laplace-approximated
Thompson sampling of Chapelle & Li 2011): y = eta + (r - p) / (p (1 - p)), weight w = p (1 - p),
p = sigmoid(eta). So every learned quantity is in logits, the model's own units, and a prior
precision says how many logits of evidence it takes to move the model's order, whatever the
click rate. Feedback first calibrates the intercept (which leaves the order as it is) and, more
slowly, the representation features ``phi`` (``features.py``: the user state times the item
vector, and a block that only new items have). Nothing here is a per-item count: a correction
learned in context applies to every item with a similar representation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_REINVERT = 256  # updates between exact re-inversions of Lambda_n (Sherman-Morrison drift)


class BayesLinearHead:
    """NIG posterior over theta for x = [1, score, phi]; ``prior_precision`` per coordinate."""

    def __init__(self, prior_mean: np.ndarray, prior_precision: np.ndarray, a0: float = 2.0,
                 b0: float = 0.25) -> None:
        mu0 = np.asarray(prior_mean, np.float64)
        lam0 = np.asarray(prior_precision, np.float64)
        if mu0.shape != lam0.shape or mu0.ndim != 1 or np.any(lam0 <= 0):
            raise ValueError(f"prior mean {mu0.shape} and positive precision {lam0.shape} must be equal 1-D")
        self.mu0, self.lam0, self.a0, self.b0 = mu0, lam0, float(a0), float(b0)
        self.precision = np.diag(lam0)
        self.cov = np.diag(1.0 / lam0)  # Lambda_n^-1
        self.eta = lam0 * mu0  # Lambda0 mu0 + X^T y
        self.yy = 0.0
        self.n = 0
        self._since_inverse = 0

    @property
    def dim(self) -> int:
        return len(self.mu0)

    # ---- posterior ----------------------------------------------------------------------
    @property
    def mean(self) -> np.ndarray:
        return self.cov @ self.eta

    @property
    def a(self) -> float:
        return self.a0 + 0.5 * self.n

    @property
    def b(self) -> float:
        mu = self.mean
        quad0 = float(self.mu0 @ (self.lam0 * self.mu0))
        return self.b0 + 0.5 * max(self.yy + quad0 - float(mu @ self.eta), 0.0)  # mu^T Lambda mu = mu^T eta

    @property
    def noise_var(self) -> float:
        """E[sigma^2] under the posterior, b / (a - 1)."""
        return self.b / (self.a - 1.0)

    def quadratic_form(self, x: np.ndarray) -> np.ndarray:
        """x^T Lambda_n^-1 x per row: the variance of x . theta per unit sigma^2."""
        x = self._check(x)
        return np.einsum("nd,de,ne->n", x, self.cov, x)

    def sample_theta(self, n_draws: int, rng: np.random.Generator, scale: float | None = None) -> np.ndarray:
        """(n_draws, d) posterior draws. ``scale`` None: sigma^2 ~ InvGamma(a_n, b_n) per draw
        (NIG); else a fixed sigma = scale (linear Thompson sampling, Agrawal & Goyal 2013)."""
        if scale is None:
            sigma2 = self.b / rng.gamma(self.a, 1.0, size=n_draws)  # InvGamma(a, b)
        else:
            sigma2 = np.full(n_draws, float(scale) ** 2)
        chol = np.linalg.cholesky(self.cov + 1e-12 * np.eye(self.dim))
        z = rng.standard_normal((n_draws, self.dim)) @ chol.T
        return self.mean + np.sqrt(sigma2)[:, None] * z

    # ---- learning -----------------------------------------------------------------------
    def update(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> None:
        x = self._check(x)
        y = np.asarray(y, np.float64).reshape(-1)
        w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
        if len(y) != len(x) or len(w) != len(x) or not np.all(np.isfinite(y)) or np.any(~(w > 0)):
            raise ValueError(f"need {len(x)} finite targets and positive weights, got {y.shape}, {w.shape}")
        for xi, wi in zip(x, w, strict=True):
            cx = self.cov @ xi  # Sherman-Morrison: (L + w x x^T)^-1 = L^-1 - w L^-1 x x^T L^-1 / (1 + w x^T L^-1 x)
            self.cov -= wi * np.outer(cx, cx) / (1.0 + wi * (xi @ cx))
        self.precision += (x * w[:, None]).T @ x
        self.eta += x.T @ (w * y)
        self.yy += float(w @ (y * y))
        self.n += len(y)
        self._since_inverse += len(y)
        if self._since_inverse >= _REINVERT:
            self.cov = np.linalg.inv(self.precision)
            self._since_inverse = 0

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be (n, {self.dim}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("features must be finite")
        return x

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"mu0": self.mu0.copy(), "lam0": self.lam0.copy(), "a0": self.a0, "b0": self.b0,
                "precision": self.precision.copy(), "eta": self.eta.copy(), "yy": self.yy, "n": self.n}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BayesLinearHead:
        head = cls(state["mu0"], state["lam0"], float(state["a0"]), float(state["b0"]))
        d = head.dim
        precision, eta = np.asarray(state["precision"], np.float64), np.asarray(state["eta"], np.float64)
        if precision.shape != (d, d) or eta.shape != (d,):
            raise ValueError(f"linear head state: precision {precision.shape}, eta {eta.shape}, want d={d}")
        head.precision, head.eta = precision, eta
        head.cov = np.linalg.inv(precision)
        head.yy, head.n = float(state["yy"]), int(state["n"])
        return head


class ItemEffects:
    """Per-item offsets for new items only (the per-arm part of hybrid LinUCB, Li et al. 2010).

    A new item's value is the head's x . theta plus its own delta_i ~ N(0, tau^2) (logits):
    what its text cannot say (its quality, a text vector that is off). Each shown new item's
    residual y = z - x . mu_head (z its working response, weight w) ~ N(delta_i, sigma^2 / w)
    updates it in closed form:

        precision_i = 1 / tau^2 + sum_i w / sigma^2,    mean_i = (sum_i w y / sigma^2) / precision_i

    so its uncertainty shrinks as its own feedback arrives. Items the model learned from
    interactions have no entry and no offset: their value stays the model's in context. At
    most ``capacity`` items are kept (the oldest entry is dropped first; a dropped item falls
    back to the prior, which is where it started).
    """

    def __init__(self, tau: float, capacity: int = 100_000) -> None:
        self.tau, self.capacity = float(tau), int(capacity)
        self.stats: dict[int, list[float]] = {}  # item -> [sum of weights, weighted sum of residuals]

    def posterior(self, arms: np.ndarray, is_new: np.ndarray, noise_var: float) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of delta per candidate (0, 0 for items that are not new)."""
        mean, var = np.zeros(len(arms)), np.zeros(len(arms))
        if self.tau <= 0:
            return mean, var
        for j in np.flatnonzero(is_new):
            n, total = self.stats.get(int(arms[j]), (0.0, 0.0))
            precision = 1.0 / self.tau**2 + n / noise_var
            mean[j], var[j] = total / noise_var / precision, 1.0 / precision
        return mean, var

    def update(self, arms: np.ndarray, is_new: np.ndarray, residuals: np.ndarray,
               weights: np.ndarray | None = None) -> None:
        if self.tau <= 0:
            return
        w = np.ones(len(arms)) if weights is None else np.asarray(weights, np.float64)
        for a, y, wi in zip(np.asarray(arms)[is_new], np.asarray(residuals)[is_new], w[is_new], strict=True):
            entry = self.stats.setdefault(int(a), [0.0, 0.0])
            entry[0] += float(wi)
            entry[1] += float(wi * y)
        while len(self.stats) > self.capacity:
            del self.stats[next(iter(self.stats))]

    def state_dict(self) -> dict[str, Any]:
        arms = np.fromiter(self.stats, np.int64, len(self.stats))
        vals = np.array(list(self.stats.values()), np.float64).reshape(-1, 2)
        return {"tau": self.tau, "arms": arms, "n": vals[:, 0], "sum": vals[:, 1]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        arms, n, total = (np.asarray(state[k]) for k in ("arms", "n", "sum"))
        if not (arms.shape == n.shape == total.shape) or arms.ndim != 1:
            raise ValueError(f"item effects: arms {arms.shape}, n {n.shape}, sum {total.shape} must be equal 1-D")
        self.stats = {int(a): [float(c), float(s)] for a, c, s in zip(arms, n, total, strict=True)}
