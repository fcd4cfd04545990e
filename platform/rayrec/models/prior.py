"""The popularity prior: one number per item that the ranker adds, with a learned weight, to
its text score.

An item's prior is its log train-split popularity, standardised over the catalog:
``(log1p(count) - mean) / std``. Uniformly sampled negatives are mostly long-tail items, so
popularity alone is a strong ranker there; a language model learns it from titles only slowly
(one item at a time), while one learned weight on the prior learns it in a few steps and
leaves the model's capacity to what text can tell: taste, genre, recency.

Training, offline evaluation and serving all compute it here from ``items.parquet``'s
``popularity`` column, so the same item gets the same prior everywhere.
"""

from __future__ import annotations

import numpy as np


def popularity_prior(popularity: np.ndarray) -> np.ndarray:
    """float32 prior per item (index = item_idx) from train-split positive counts."""
    counts = np.asarray(popularity, dtype=np.float64)
    if counts.size == 0:
        return np.zeros(0, dtype=np.float32)
    if np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError("popularity counts must be finite and non-negative")
    logs = np.log1p(counts)
    std = logs.std()
    return ((logs - logs.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def candidate_priors(prior: np.ndarray, candidates) -> list[np.ndarray]:
    """The prior of every candidate list (lists of item_idx), aligned with the lists.

    Indices outside the catalog (items new since preprocessing) get the catalog minimum:
    nothing is known of them but that nobody interacted with them in the train split.
    """
    floor = np.float32(prior.min()) if prior.size else np.float32(0.0)
    out = []
    for c in candidates:
        idx = np.asarray(c, dtype=np.int64)
        known = (idx >= 0) & (idx < prior.size)
        vals = np.full(idx.shape, floor, dtype=np.float32)
        vals[known] = prior[idx[known]]
        out.append(vals)
    return out


def load_item_prior(data_dir: str) -> np.ndarray:
    """The prior of every item in a preprocessed dataset (``items.parquet``)."""
    from rayrec.data.schema import ITEMS_FILE
    from rayrec.data.store import load_items

    try:
        items = load_items(data_dir)
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(
            f"no item catalog at {data_dir}/{ITEMS_FILE} ({e}): the ranker's popularity prior "
            "needs it; run preprocessing, or set model.popularity_prior=false"
        ) from None
    return popularity_prior(items["popularity"].to_numpy())  # row i = item i
