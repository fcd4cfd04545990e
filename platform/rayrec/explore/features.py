"""The representation the contextual policies learn on: the model's user state and item vectors.

One function, used by the endpoint (index vectors of the candidates, the user's history
vector) and by the experiments (the world's model vectors), so a policy learns on the same
features offline and online.

For a user state u and item vector v (both L2-normalised, any width e), with a fixed random
projection P (D x e, entries N(0, 1/D), seeded: identical on every replica and after a
restart; Johnson-Lindenstrauss keeps inner products, so sum_j (Pu)_j (Pv)_j ~ u . v):

    ctx(u, v) = sqrt(D) * (P u) * (P v)                     (D numbers, elementwise product)
    phi(u, v) = [ context_scale * ctx,                       every item
                  new * [new_item_scale, new_context_scale * ctx] ]   only items without interactions

A linear head over phi re-weights the model's own user-item affinity per direction
(neural-linear, Riquelme et al. 2018). The second block is zero for items the model has
learned from interactions and non-zero for new ones: a new item's value starts with the
extra prior variance ``(new_item_scale^2 + new_context_scale^2 |ctx|^2) / ridge_lambda`` (logits^2) that its
text-only vector deserves, and what clicks on new items teach (a calibration of text-only vectors, per
user direction) carries over to the next new item. Scaling a block is the same as dividing
its prior precision by the square of the scale.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=8)
def projection(width: int, dim: int, seed: int = 0) -> np.ndarray:
    """The fixed (dim, width) Gaussian projection for vectors of ``width`` (read-only)."""
    p = np.random.default_rng([seed, width, dim]).standard_normal((dim, width)) / np.sqrt(dim)
    p.setflags(write=False)
    return p


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def contextual_features(
    item_vectors: np.ndarray, user_vector: np.ndarray | None, is_new: np.ndarray | None = None,
    dim: int = 16, context_scale: float = 0.1, new_item_scale: float = 6.0, new_context_scale: float = 1.0,
) -> np.ndarray:
    """(n, 2 * dim + 1) features phi of n candidates for one user (module docstring).

    ``user_vector`` None (no history): the user direction is the mean of the candidates', so
    the context still says how typical each candidate is of what was retrieved.
    """
    v = np.asarray(item_vectors, np.float64)
    if v.ndim != 2:
        raise ValueError(f"item_vectors must be (n, e), got {v.shape}")
    u = np.asarray(user_vector, np.float64) if user_vector is not None else None
    if u is None or not np.any(u):
        u = v.mean(axis=0) if len(v) else np.zeros(v.shape[1])
    if u.shape != (v.shape[1],):
        raise ValueError(f"user_vector must have width {v.shape[1]}, got {u.shape}")
    p = projection(v.shape[1], dim)
    pu, pv = p @ _unit(u), _unit(v) @ p.T
    ctx = np.sqrt(dim) * pv * pu
    new = np.zeros(len(v)) if is_new is None else np.asarray(is_new, np.float64).reshape(-1)
    if len(new) != len(v):
        raise ValueError(f"is_new has {len(new)} entries for {len(v)} items")
    new_block = new[:, None] * np.hstack([np.full((len(v), 1), new_item_scale), new_context_scale * ctx])
    return np.hstack([context_scale * ctx, new_block])


def request_features(cfg, item_vectors, user_vector, is_new) -> np.ndarray:
    """``contextual_features`` with the explore section's widths and scales (cfg: ExploreConfig)."""
    return contextual_features(item_vectors, user_vector, is_new, **feature_settings(cfg))


def feature_settings(cfg) -> dict:
    """The explore section's (cfg: ExploreConfig) arguments of ``contextual_features``."""
    return {"dim": cfg.feature_dim, "context_scale": cfg.context_scale, "new_item_scale": cfg.new_item_scale,
            "new_context_scale": cfg.new_context_scale}
