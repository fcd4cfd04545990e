"""The nonparametric bootstrap shared by offline evaluation (paired model comparisons over
users) and off-policy evaluation (estimators over logged decisions).

A replicate draws the n units (users, decisions) with replacement: unit i appears c_i times,
c ~ Multinomial(n; 1/n, ..., 1/n), and the statistic is recomputed with the counts as
weights, theta*_b = stat(c_b); a weighted mean is then sum_i c_i x_i / sum_i c_i. The
percentile interval at level 1 - alpha is the alpha/2 and 1 - alpha/2 quantiles of the B
replicates (Efron & Tibshirani 1993, ch. 13). Counts instead of index draws let a statistic
that refits something (the OPE reward model) take them as sample weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def bootstrap(statistic: Callable[[np.ndarray], T], n: int, n_boot: int, seed: int = 0) -> list[T]:
    """``n_boot`` replicates ``statistic(c)``, ``c`` the float (n,) counts of one resample."""
    rng = np.random.default_rng(seed)
    return [statistic(np.bincount(rng.integers(n, size=n), minlength=n).astype(np.float64))
            for _ in range(n_boot)]


def percentile_interval(replicates: Sequence[float], alpha: float = 0.05) -> tuple[float, float]:
    """The (alpha/2, 1 - alpha/2) quantiles of the replicates (linear interpolation)."""
    lo, hi = np.quantile(np.asarray(replicates, dtype=np.float64), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
