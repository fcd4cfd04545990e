"""The report's figures, as PNG bytes (matplotlib's Agg backend: no display needed).

Each function takes the stage's result dict and returns None when it holds nothing to draw.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib  # deferred: the Agg backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return buf.getvalue()


def training_curve(history: list[dict[str, Any]], metric: str) -> bytes | None:
    """Training loss and the validation metric against optimizer steps."""
    rows = [r for r in history if "step" in r and "loss" in r]
    if not rows:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker="o", ms=3)
    left.set(xlabel="optimizer step", ylabel="training loss", title="Training loss")
    valid = [r for r in rows if f"valid_{metric}" in r]
    if valid:
        right.plot([r["step"] for r in valid], [r[f"valid_{metric}"] for r in valid], marker="o", color="C1")
    right.set(xlabel="optimizer step", ylabel=f"validation {metric}", title=f"Validation {metric}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _png(fig)


def metrics_vs_baselines(rows: list[dict[str, Any]], metrics: list[str]) -> bytes | None:
    """Grouped bars: each model's metrics with their 95% CIs. ``rows``: {"model", metric:
    value, metric + "_ci": (lo, hi) or None}."""
    if not rows or not metrics:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(11.0, max(5.0, 1.0 * len(rows) * len(metrics))), 3.8))
    x = np.arange(len(rows))
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        values = np.array([r.get(m, np.nan) for r in rows], dtype=float)
        cis = [r.get(f"{m}_ci") for r in rows]
        err = np.array([[max(v - c[0], 0.0), max(c[1] - v, 0.0)] if c else [0.0, 0.0]
                        for v, c in zip(values, cis, strict=True)]).T
        ax.bar(x + (j - (len(metrics) - 1) / 2) * width, values, width, yerr=err, capsize=3, label=m)
    ax.set_xticks(x, [r["model"] for r in rows], rotation=20, ha="right")
    ax.set(ylabel="mean over users", title="Quality against the baselines (95% CI)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def regret_curves(policies: dict[str, dict[str, Any]]) -> bytes | None:
    """Cumulative regret (or reward, for replay) per round, mean and 95% band over seeds."""
    key = "cum_regret" if any("cum_regret" in p for p in policies.values()) else "cum_reward"
    curves = {name: p[key] for name, p in policies.items() if key in p}
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, (mean, half) in curves.items():
        mean, half = np.asarray(mean), np.asarray(half)
        rounds = np.arange(1, len(mean) + 1)
        ax.plot(rounds, mean, label=name)
        ax.fill_between(rounds, mean - half, mean + half, alpha=0.2)
    label = key.replace("cum_", "cumulative ")
    ax.set(xlabel="round", ylabel=label, title=f"Exploration: {label} (mean, 95% band over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def relevance_diversity(policies: dict[str, dict[str, Any]]) -> bytes | None:
    """Each policy's CTR against the intra-list diversity of its slates, with 95% CIs."""
    points = {n: p for n, p in policies.items() if "ctr" in p and "intra_list_diversity" in p}
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, p in points.items():
        ild, ctr = p["intra_list_diversity"], p["ctr"]
        ax.errorbar(ild["mean"], ctr["mean"], xerr=ild["ci95"], yerr=ctr["ci95"], fmt="o", capsize=3, label=name)
        ax.annotate(name, (ild["mean"], ctr["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(xlabel="intra-list diversity (mean pairwise distance)", ylabel="CTR",
           title="Relevance against diversity, per policy")
    ax.grid(alpha=0.3)
    return _png(fig)
