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


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    """Mean of a - b over paired users, the users a beats b on and loses to, and the percentile
    95% CI of the mean (users resampled with replacement: sum(c) = n, so the mean is c @ d / n)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    out = {"delta": float(d.mean()), "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}
    if n_boot > 0 and len(d) > 1:
        out["ci95"] = list(percentile_interval(bootstrap(lambda c: float(c @ d) / len(d), len(d), n_boot, seed)))
    return out
