"""Diversity re-ranking over item embeddings: MMR and DPP (fast greedy MAP, Chen et al. 2018).

Both are sequential: slot by slot they score every remaining candidate with a *gain* that
trades relevance against similarity to what is already picked. The gain objects below are
also what the exploration policies pick with, so a policy + diversity is one procedure
(and its propensities stay exact).

``diversity_weight`` w in [0, 1]: 0 = pure relevance (the relevance order), 1 = pure diversity.
- MMR gain:  (1 - w) * rel_i - w * max_{s in S} cos(i, s)
- DPP gain:  (1 - w) * rel_i + w * log d_i^2, where d_i^2 is the Cholesky residual of item i
  under the cosine kernel given S. This is Chen et al.'s log-det gain for the kernel
  L = diag(q) S diag(q), q = exp(alpha * rel), alpha = (1 - w) / (2 w), scaled by w.
"""

from __future__ import annotations

import numpy as np

_MIN_RESIDUAL = 1e-10


def _normalise(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, d), got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class RelevanceGain:
    """No diversity: the gain is the relevance itself."""

    def gains(self, relevance: np.ndarray) -> np.ndarray:
        return relevance

    def add(self, j: int) -> None:
        pass


class MMRGain:
    """Maximal marginal relevance (Carbonell & Goldstein 1998) with cosine similarity."""

    def __init__(self, embeddings: np.ndarray, diversity_weight: float):
        self.x = _normalise(embeddings)
        self.w = float(diversity_weight)
        self.max_sim = np.zeros(len(self.x))
        self.empty = True

    def gains(self, relevance: np.ndarray) -> np.ndarray:
        penalty = 0.0 if self.empty else self.max_sim
        return (1.0 - self.w) * relevance - self.w * penalty

    def add(self, j: int) -> None:
        sim = self.x @ self.x[j]
        self.max_sim = sim if self.empty else np.maximum(self.max_sim, sim)
        self.empty = False


class DPPGain:
    """Incremental Cholesky of the cosine kernel (Chen et al. 2018, Algorithm 1): O(n k) per slot."""

    def __init__(self, embeddings: np.ndarray, diversity_weight: float):
        self.x = _normalise(embeddings)
        self.w = float(diversity_weight)
        n = len(self.x)
        self.d2 = np.ones(n)  # diag of the cosine kernel
        self.c: list[np.ndarray] = []  # rows of the incremental Cholesky factor

    def gains(self, relevance: np.ndarray) -> np.ndarray:
        return (1.0 - self.w) * relevance + self.w * np.log(np.maximum(self.d2, _MIN_RESIDUAL))

    def add(self, j: int) -> None:
        dj = np.sqrt(max(self.d2[j], _MIN_RESIDUAL))
        kj = self.x @ self.x[j]
        proj = sum((c[j] * c for c in self.c), np.zeros_like(kj))
        e = (kj - proj) / dj
        self.c.append(e)
        self.d2 = self.d2 - e**2


def make_gain(method: str, embeddings: np.ndarray | None, diversity_weight: float):
    """Gain object for ``method`` in {"none", "mmr", "dpp"}; "none" or weight 0 -> relevance."""
    if method == "none" or diversity_weight == 0.0:
        return RelevanceGain()
    if embeddings is None:
        raise ValueError(f"diversity method {method!r} needs item embeddings (features)")
    if method == "mmr":
        return MMRGain(embeddings, diversity_weight)
    if method == "dpp":
        return DPPGain(embeddings, diversity_weight)
    raise ValueError(f"unknown diversity method {method!r}; use none, mmr or dpp")


def _greedy(relevance: np.ndarray, gain, k: int) -> np.ndarray:
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.ndim != 1:
        raise ValueError(f"relevance must be 1-D, got shape {rel.shape}")
    k = min(int(k), len(rel))
    picked = np.zeros(len(rel), dtype=bool)
    out = []
    for _ in range(k):
        g = np.where(picked, -np.inf, gain.gains(rel))
        j = int(np.argmax(g))
        out.append(j)
        picked[j] = True
        gain.add(j)
    return np.asarray(out, dtype=np.int64)


def mmr(relevance: np.ndarray, embeddings: np.ndarray, k: int, diversity_weight: float = 0.3) -> np.ndarray:
    """Indices of a k-slate re-ranked by MMR; weight 0 returns the relevance order."""
    if len(embeddings) != len(relevance):
        raise ValueError("relevance and embeddings must have the same length")
    return _greedy(relevance, make_gain("mmr", embeddings, diversity_weight), k)


def dpp(relevance: np.ndarray, embeddings: np.ndarray, k: int, diversity_weight: float = 0.3) -> np.ndarray:
    """Indices of a k-slate by greedy DPP MAP inference (fast incremental Cholesky)."""
    if len(embeddings) != len(relevance):
        raise ValueError("relevance and embeddings must have the same length")
    return _greedy(relevance, make_gain("dpp", embeddings, diversity_weight), k)
