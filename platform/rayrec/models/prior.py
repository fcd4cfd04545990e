"""The ranker's priors: per-candidate numbers it adds, each with a learned weight, to its text
score. The popularity prior (below) and, with ``model.retrieval_prior``, the sequential
retriever's log-lift of the candidate for this history (:mod:`rayrec.seqrec.scorer`).

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

from rayrec.data.schema import ITEMS_FILE
from rayrec.data.store import load_items


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
    try:
        items = load_items(data_dir)
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(
            f"no item catalog at {data_dir}/{ITEMS_FILE} ({e}): the ranker's popularity prior "
            "needs it; run preprocessing, or set model.popularity_prior=false"
        ) from None
    return popularity_prior(items["popularity"].to_numpy())  # row i = item i


def prior_names(cfg) -> list[str]:
    """The priors a ranker with ModelConfig ``cfg`` reads, in feature order."""
    return [n for n, on in (("popularity", cfg.popularity_prior), ("retrieval", cfg.retrieval_prior)) if on]


def ranker_priors(cfg, item_prior: np.ndarray | None, candidates,
                  retrieval_scores=None) -> list[np.ndarray] | None:
    """Each candidate list's priors as an (n, F) float32 array (features in ``prior_names``
    order), or None when the ranker reads none. A list without retrieval scores (a text or
    popularity candidate) gets 0 there: as likely as a random item."""
    names = prior_names(cfg)
    if not names:
        return None
    if "popularity" in names and item_prior is None:
        raise ValueError("model.popularity_prior needs the item prior (items.parquet popularity)")
    pop = candidate_priors(item_prior, candidates) if "popularity" in names else None
    out = []
    for j, c in enumerate(candidates):
        cols = []
        if pop is not None:
            cols.append(pop[j])
        if "retrieval" in names:
            r = None if retrieval_scores is None else retrieval_scores[j]
            cols.append(np.zeros(len(c), np.float32) if r is None else np.asarray(r, dtype=np.float32))
        out.append(np.stack(cols, axis=1).astype(np.float32))
    return out
