"""ALS (implicit library) as a full-catalog baseline, tuned on the validation split.

Hu, Koren & Volinsky, "Collaborative Filtering for Implicit Feedback Datasets" (ICDM 2008):
minimise sum_{u,i} c_ui (p_ui - x_u^T y_i)^2 + reg (|x|^2 + |y|^2), p = 1 for an interaction,
c_ui = 1 + alpha. Factors, regularization and alpha are picked by validation NDCG@10 (fit on the
train split), then the model is refit with the same settings on everything the user has seen
before the evaluated item, as the sequential models read it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from rayrec.metrics import ndcg_at_k

log = logging.getLogger(__name__)

GRID = {"factors": (32, 64, 128), "regularization": (0.01, 0.1, 1.0), "alpha": (1.0, 10.0)}


def _matrix(histories: Sequence[np.ndarray], users: Sequence[int], n_users: int, n_items: int) -> sp.csr_matrix:
    rows = np.concatenate([np.full(len(h), u) for u, h in zip(users, histories, strict=True)])
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    m.data[:] = 1.0  # repeated interactions count once
    return m


class AlsBaseline:
    """Fit on (user, history) lists; ``topn`` ranks the catalog minus each user's history."""

    def __init__(self, n_items: int, iterations: int = 15, seed: int = 0):
        self.n_items, self.iterations, self.seed = n_items, iterations, seed
        self.params: dict[str, float] = {}
        self.model = None
        self._seen = None

    def fit(self, users: Sequence[int], histories: Sequence[np.ndarray], **params) -> AlsBaseline:
        from implicit.cpu.als import (
            AlternatingLeastSquares,  # the ALS baseline only: loads its BLAS threads
        )

        n_users = int(max(users)) + 1
        self._seen = _matrix(histories, users, n_users, self.n_items)
        p = {**{k: v[0] for k, v in GRID.items()}, **(params or self.params)}
        self.model = AlternatingLeastSquares(
            factors=int(p["factors"]), regularization=float(p["regularization"]), alpha=float(p["alpha"]),
            iterations=self.iterations, random_state=self.seed, num_threads=0,
        )
        self.model.fit(self._seen, show_progress=False)
        self.params = p
        return self

    def topn(self, users: Sequence[int], n: int, masks: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """Top-n items per user: the user's fitted history filtered out, or with ``masks`` only
        the user's mask (LlamaRec's input window: older items may be recommended)."""
        u = np.asarray(users)
        if masks is None:
            ids, _ = self.model.recommend(u, self._seen[u], N=n, filter_already_liked_items=True)
            return [np.asarray(r[r >= 0], dtype=np.int64) for r in ids]
        width = n + max((len(m) for m in masks), default=0)  # enough left after the mask
        ids, _ = self.model.recommend(u, self._seen[u], N=min(width, self._seen.shape[1]),
                                      filter_already_liked_items=False)
        return [np.asarray(r[(r >= 0) & ~np.isin(r, m)][:n], dtype=np.int64) for r, m in zip(ids, masks, strict=True)]

    def tune(self, users: Sequence[int], train_histories: Sequence[np.ndarray],
             valid_targets: Sequence[int]) -> dict[str, float]:
        """Grid search on validation NDCG@10; keeps and returns the best settings."""
        best, best_p = -1.0, {}
        for values in itertools.product(*GRID.values()):
            p = dict(zip(GRID, values, strict=True))
            tops = self.fit(users, train_histories, **p).topn(users, 10)
            score = float(np.mean([ndcg_at_k(t, int(y), 10) for t, y in zip(tops, valid_targets, strict=True)]))
            if score > best:
                best, best_p = score, p
        self.params = best_p
        log.info("ALS tuned on validation: %s (NDCG@10 %.4f)", best_p, best)
        return {**best_p, "valid_ndcg@10": best}
