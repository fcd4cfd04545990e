"""Evaluation report: JSON (everything), markdown (protocol + table), PNG (HR@K, NDCG@K by K)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from rayrec import storage
from rayrec.tracking import start_run

JSON_FILE = "eval.json"
MARKDOWN_FILE = "eval.md"
PLOT_FILE = "eval.png"
PER_USER_FILE = "per_user.parquet"


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def render_markdown(result: dict[str, Any]) -> str:
    """The protocol as a bullet list, then one row per model, then the paired comparisons."""
    p, models = result["protocol"], result["models"]
    cols = [c for c in next(iter(models.values())) if c not in ()]
    lines = ["# Offline evaluation", "", "## Protocol", ""]
    for key, val in p.items():
        if isinstance(val, dict):
            val = "; ".join(f"{k}: {v}" for k, v in val.items())
        lines.append(f"- **{key}**: {val}")
    lines += ["", "## Results", "", "| model | " + " | ".join(cols) + " |",
              "|---|" + "---|" * len(cols)]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m[c]) for c in cols) + " |")
    if result.get("comparisons"):
        lines += ["", "## Paired comparisons (same users, same candidates)", ""]
        for name, c in result["comparisons"].items():
            ci = c.get("ci95")
            ci_txt = f", 95% CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]" if ci else ""
            lines.append(f"- {name}: {c['metric']} delta {c['delta']:+.4f}{ci_txt} "
                         f"(better for {c['wins']} users, worse for {c['losses']})")
    lines += ["", f"![HR@K and NDCG@K by model]({PLOT_FILE})"]
    return "\n".join(lines) + "\n"


def plot_by_k(result: dict[str, Any], path) -> None:
    """HR@K and NDCG@K against K, one line per model (``path``: a file name or a binary file)."""
    import matplotlib  # deferred: the Agg backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = result["protocol"]["ks"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("hr", "ndcg"), strict=True):
        for name, m in result["models"].items():
            ax.plot(ks, [m[f"{metric}@{k}"] for k in ks], marker="o", label=name)
        ax.set_xlabel("K")
        ax.set_title(f"{metric.upper()}@K")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0].legend()
    p = result["protocol"]
    fig.suptitle(f"{p['split']} split, {p['users']} users, {p['candidates']} candidates "
                 f"(~{p['candidates_per_user']['mean']:.0f} per user)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_report(result: dict[str, Any], per_user: pd.DataFrame, out_dir: str | Path) -> dict[str, str]:
    """Write eval.json, eval.md, eval.png and per_user.parquet into out_dir (a local path or a
    URI); returns their locations."""
    files = {k: storage.join(str(out_dir), f) for k, f in (
        ("json", JSON_FILE), ("markdown", MARKDOWN_FILE), ("plot", PLOT_FILE), ("per_user", PER_USER_FILE))}
    storage.write_table(per_user, files["per_user"])
    png = io.BytesIO()
    plot_by_k(result, png)
    storage.write_bytes(files["plot"], png.getvalue())
    storage.write_text(files["markdown"], render_markdown(result))
    storage.write_text(files["json"], json.dumps({**result, "files": files}, indent=2, default=float))
    return files


def track_evaluation(cfg, result: dict[str, Any], name: str = "evaluate") -> None:
    """One MLflow run (:mod:`rayrec.tracking`) of a finished evaluation: the evaluate section
    and the protocol's short entries as params; ``<metric>/<model>`` and the comparisons
    (``delta/<a>_vs_<b>``, ``ci95_lo/...``, ``ci95_hi/...``) as metrics; HR@K and NDCG@K also
    as curves over K (``<metric>_by_k/<model>``, step = K); the report files as artifacts."""
    p = result["protocol"]
    short = {k: v for k, v in p.items()  # the protocol's counts and names, not its descriptions
             if isinstance(v, int | float) or (isinstance(v, str) and len(v) <= 80 and k != "data_dir")}
    params = {"evaluate": cfg.evaluate.model_dump(mode="json"), **short}
    with start_run(cfg, name, params) as run:
        run.log_metrics({f"{metric}/{model}": v for model, m in result["models"].items() for metric, v in m.items()})
        for cmp, c in result.get("comparisons", {}).items():
            lo, hi = c.get("ci95", (None, None))
            run.log_metrics({f"delta/{cmp}": c["delta"], f"ci95_lo/{cmp}": lo, f"ci95_hi/{cmp}": hi})
        run.log_metrics({f"timing/{k}": v for k, v in result.get("timing", {}).items()})
        for model, m in result["models"].items():
            run.log_series({f"{metric}_by_k/{model}": [m.get(f"{metric}@{k}") for k in p["ks"]]
                            for metric in ("hr", "ndcg")}, p["ks"])
        for path in result.get("files", {}).values():
            run.log_artifacts(path, "report")
