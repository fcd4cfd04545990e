"""What every evaluation protocol does once its systems have ranked: per-user rows → one mean
per model and metric, paired bootstrap comparisons of the headline metric, and the report
(JSON, markdown, plot, per-user Parquet, one MLflow run).

The protocols (:mod:`rayrec.evaluation.fullcatalog`, :mod:`rayrec.evaluation.sampled`) differ
only in how the lists are made and what the protocol section says.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from rayrec.evaluation.bootstrap import paired_bootstrap
from rayrec.evaluation.report import track_evaluation, write_report


def headline_metric(ks: list[int]) -> str:
    """NDCG@10 when 10 is among the cut-offs, else NDCG at the largest."""
    return f"ndcg@{10 if 10 in ks else max(ks)}"


def select_sample(frame: pd.DataFrame, max_users: int | None, seed: int) -> pd.DataFrame:
    """All rows (one per user), or a seeded sample of ``max_users`` of them, kept in order."""
    if max_users is not None and len(frame) > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=max_users, replace=False))
        frame = frame.iloc[keep]
    return frame.reset_index(drop=True)


def user_selection(n_users: int, n_in_split: int, ec) -> str:
    """The protocol's line on which users were evaluated."""
    return ("all users of the split" if n_users == n_in_split
            else f"seeded sample (seed {ec.seed}) of max_users={ec.max_users}")


def means_by_model(per_user: pd.DataFrame, models: Iterable[str], columns: Iterable[str]) -> dict[str, dict]:
    """model -> column -> mean over its users (NaN rows, e.g. an undefined AUC, skipped)."""
    columns = list(columns)
    return {m: {c: float(per_user.loc[per_user["model"] == m, c].mean()) for c in columns} for m in models}


def compare(per_user: pd.DataFrame, pairs: Iterable[tuple[str, str]], metric: str, ec) -> dict[str, dict]:
    """``a_vs_b`` -> the paired bootstrap of ``metric`` (same users, sorted by user) for each pair."""
    by_model = {m: g.sort_values("user_idx")[metric].to_numpy() for m, g in per_user.groupby("model")}
    return {f"{a}_vs_{b}": {"metric": metric, **paired_bootstrap(by_model[a], by_model[b], ec.bootstrap, ec.seed)}
            for a, b in pairs}


def finish(cfg, protocol: dict, summary: dict, comparisons: dict, per_user: pd.DataFrame,
           started: float, timing: dict[str, float] | None = None) -> dict[str, Any]:
    """The result dict; its report written to ``cfg.eval_dir`` and tracked. ``started``: the
    protocol's ``time.time()`` at its start."""
    result: dict[str, Any] = {
        "protocol": protocol, "models": summary, "comparisons": comparisons,
        "timing": {"total_seconds": round(time.time() - started, 2),
                   **{k: round(v, 2) for k, v in (timing or {}).items()}}}
    result["files"] = write_report(result, per_user, cfg.eval_dir)
    track_evaluation(cfg, result)
    return result
