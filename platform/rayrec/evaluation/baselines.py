"""Non-learned rankers that the ranker must beat, scoring the same candidate lists."""

from __future__ import annotations

import numpy as np


def popularity_scores(candidates: np.ndarray, item_popularity: np.ndarray) -> np.ndarray:
    """Score = the item's positives in the train split (``items.parquet`` popularity)."""
    return np.asarray(item_popularity, dtype=np.float64)[np.asarray(candidates, dtype=np.int64)]


def candidate_order_scores(candidates: np.ndarray) -> np.ndarray:
    """Score = the order the candidates arrived in: first gets the highest score."""
    n = len(candidates)
    return np.arange(n, 0, -1, dtype=np.float64)


def popularity_top(
    item_popularity: np.ndarray, n: int, exclude: set[int] | None = None
) -> np.ndarray:
    """The n most popular item ids not in ``exclude`` (ties by lower item_idx), most popular first."""
    pop = np.asarray(item_popularity, dtype=np.float64)
    order = np.lexsort((np.arange(len(pop)), -pop))
    if exclude:
        order = order[~np.isin(order, np.fromiter(exclude, dtype=np.int64))]
    return order[:n].astype(np.int64)
