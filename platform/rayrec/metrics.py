"""Ranking and beyond-accuracy metrics. The one implementation used by offline evaluation,
training-time validation, exploration experiments and reports.

Conventions: ``ranked`` is a sequence of item ids, best first; ``relevant`` the set of
relevant ids. Per-list functions return a float; callers average over users.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def hit_rate_at_k(ranked: Sequence[int], relevant: set[int] | int, k: int) -> float:
    """1.0 when any relevant item is in the top k."""
    rel = {relevant} if isinstance(relevant, int | np.integer) else relevant
    return float(any(int(i) in rel for i in ranked[:k]))


def ndcg_at_k(ranked: Sequence[int], relevant: set[int] | int, k: int) -> float:
    """Binary-relevance NDCG@k."""
    rel = {relevant} if isinstance(relevant, int | np.integer) else relevant
    dcg = sum(1.0 / math.log2(pos + 2) for pos, i in enumerate(ranked[:k]) if int(i) in rel)
    ideal = sum(1.0 / math.log2(pos + 2) for pos in range(min(len(rel), k)))
    return dcg / ideal if ideal > 0 else 0.0


def reciprocal_rank(ranked: Sequence[int], relevant: set[int] | int) -> float:
    """1 / rank of the first relevant item (0 when none is ranked)."""
    rel = {relevant} if isinstance(relevant, int | np.integer) else relevant
    for pos, i in enumerate(ranked):
        if int(i) in rel:
            return 1.0 / (pos + 1)
    return 0.0


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of one list (ties count half); NaN when only one class is present."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels) > 0
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def rank_of_positive(scores: np.ndarray, positive_index: int = 0) -> int:
    """0-based rank of candidate ``positive_index`` when sorted by score (ties pessimistic)."""
    scores = np.asarray(scores, dtype=np.float64)
    return int((scores > scores[positive_index]).sum() + (scores == scores[positive_index]).sum() - 1)


def intra_list_diversity(embeddings: np.ndarray) -> float:
    """Mean pairwise cosine distance between the items of one list (0 for fewer than 2)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if len(x) < 2:
        return 0.0
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    n = len(x)
    return float(1.0 - (sim.sum() - np.trace(sim)) / (n * (n - 1)))


def category_coverage(categories: Sequence[str | int], n_categories: int | None = None) -> float:
    """Distinct categories in a list, as a fraction of n_categories (or a count if None)."""
    distinct = len(set(categories))
    return distinct / n_categories if n_categories else float(distinct)


def catalog_coverage(lists: Iterable[Sequence[int]], n_items: int) -> float:
    """Fraction of the catalog that appears in at least one recommended list."""
    seen: set[int] = set()
    for lst in lists:
        seen.update(int(i) for i in lst)
    return len(seen) / n_items if n_items else 0.0


def novelty(ranked: Sequence[int], item_popularity: np.ndarray, n_users: int) -> float:
    """Mean self-information -log2(p(i)) of the items, p(i) = users who interacted / all users."""
    if len(ranked) == 0:
        return 0.0
    pop = np.asarray(item_popularity, dtype=np.float64)[np.asarray(ranked, dtype=np.int64)]
    p = np.clip(pop / max(n_users, 1), 1.0 / max(n_users, 1), 1.0)
    return float(np.mean(-np.log2(p)))
