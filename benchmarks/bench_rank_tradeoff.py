"""Ranking quality against ranking cost on the full-catalog protocol, for one trained run.

For each setting (precision x candidates sent to the ranker x tokens per candidate sequence)
the full-catalog evaluation re-scores the retriever's top-N with the run's ranker, on the same
seeded users, and reports NDCG@10 (with the paired bootstrap CI of its difference to the
reference setting) beside the ranking time per request (one user's N candidates, in this
process, at the threads given). The cheapest setting within the noise of the reference is the
one to serve.

    python benchmarks/bench_rank_tradeoff.py --run-dir rayrec_ml_latest_small --out tradeoff.json \\
        --depths 10 20 50 --max-lengths 64 96 --precisions fp32 int8 --max-users 200

Writes ``tradeoff.json``, ``tradeoff.md`` (the table) and ``tradeoff.png`` (NDCG@10 vs ms).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _evaluate(run_dir: str, out: Path, depth: int, max_length: int, precision: str, args) -> dict:
    """One full-catalog evaluation of retriever -> ranker at this setting (no baselines)."""
    from rayrec.config import load_config
    from rayrec.evaluation.fullcatalog import run_full_catalog

    saved = Path(run_dir) / "config.yaml"  # what `rayrec main` wrote; else --config
    cfg = load_config(str(saved) if saved.is_file() else args.config, {
        "run_dir": run_dir, "model.max_length": max_length, "model.precision": precision,
        "evaluate.rank_depth": depth, "evaluate.baselines": False, "evaluate.max_users": args.max_users,
        "evaluate.scoring": "local", "evaluate.bootstrap": 0, "evaluate.out": str(out),
        "tracking.enabled": False,
    })
    t0 = time.time()
    result = run_full_catalog(cfg)
    name = next(m for m in result["models"] if m.endswith("_ranker"))
    m = result["models"][name]
    return {"precision": precision, "depth": depth, "max_length": max_length,
            "ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"], "ms_per_request": m["ms_per_user"],
            "users": result["protocol"]["users"], "wall_s": round(time.time() - t0, 1),
            "per_user": result["files"]["per_user"], "model": name}


def _paired(rows: list[dict], ref: dict, bootstrap: int) -> None:
    """NDCG@10 difference to the reference setting per user, with a bootstrap 95% CI."""
    import pandas as pd
    from rayrec.evaluation.bootstrap import paired_bootstrap

    def ndcg(row):
        pu = pd.read_parquet(row["per_user"])
        return pu[pu["model"] == row["model"]].sort_values("user_idx")["ndcg@10"].to_numpy()

    base = ndcg(ref)
    for row in rows:
        d = paired_bootstrap(ndcg(row), base, bootstrap, seed=0)
        row["delta_vs_ref"] = d["delta"]
        row["delta_ci95"] = d["ci95"]


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (precision, length), marker in zip(sorted({(r["precision"], r["max_length"]) for r in rows}),
                                           "os^vD<>", strict=False):
        sub = sorted((r for r in rows if (r["precision"], r["max_length"]) == (precision, length)),
                     key=lambda r: r["depth"])
        ax.plot([r["ms_per_request"] for r in sub], [r["ndcg@10"] for r in sub], marker=marker,
                label=f"{precision}, {length} tokens")
        for r in sub:
            ax.annotate(f"{r['depth']}", (r["ms_per_request"], r["ndcg@10"]), fontsize=8,
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("ranking time per request (ms, in-process)")
    ax.set_ylabel("full-catalog NDCG@10")
    ax.set_title("candidates ranked (labels) vs quality and cost")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a run with data, retriever and a ranker checkpoint")
    ap.add_argument("--config", default="configs/ml-latest-small.yaml",
                    help="the run's config when the run dir has no config.yaml")
    ap.add_argument("--out", required=True, help="JSON path; .md and .png are written beside it")
    ap.add_argument("--depths", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--max-lengths", type=int, nargs="+", default=[64, 96])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    ap.add_argument("--max-users", type=int, default=200, help="seeded sample, the same for every setting")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for scoring")
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = out.with_suffix("")
    rows = []
    for precision in args.precisions:
        for length in args.max_lengths:
            for depth in args.depths:
                row = _evaluate(args.run_dir, work / f"{precision}_{length}_{depth}", depth, length, precision, args)
                rows.append(row)
                print(f"{precision:>5} {length:>3} tokens top-{depth:<3} NDCG@10 {row['ndcg@10']:.4f} "
                      f"HR@10 {row['hr@10']:.4f}  {row['ms_per_request']:.0f} ms/request", flush=True)
    ref = max(rows, key=lambda r: (r["precision"] == "fp32", r["max_length"], r["depth"] == 20))
    _paired(rows, ref, args.bootstrap)
    _plot(rows, out.with_suffix(".png"))
    lines = [f"Reference: {ref['precision']}, {ref['max_length']} tokens, top-{ref['depth']} "
             f"({ref['users']} users, the same for every setting; {args.threads} torch threads).", "",
             "| precision | tokens | candidates | NDCG@10 | Δ vs ref [95% CI] | HR@10 | ms/request |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["delta_ci95"]
        lines.append(f"| {r['precision']} | {r['max_length']} | {r['depth']} | {r['ndcg@10']:.4f} | "
                     f"{r['delta_vs_ref']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {r['hr@10']:.4f} | "
                     f"{r['ms_per_request']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.write_text(json.dumps({"reference": {k: ref[k] for k in ("precision", "max_length", "depth")},
                               "threads": args.threads, "rows": rows}, indent=2, default=float))
    print("\n".join(lines))
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
