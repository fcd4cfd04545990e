"""Item index benchmark: approximate FAISS indexes (IVF-Flat, HNSW) vs the exact flat baseline.

Clustered random unit vectors stand in for item embeddings. For each index type: build time,
query throughput (single queries, like serving), recall@k against the exact index, and the
speed-up over exact search measured in the same run.

    python benchmarks/bench_retrieval.py --n 20000 --dim 384 --out bench_retrieval.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from rayrec.retrieval.index import ItemIndex


def clustered(n: int, d: int, n_clusters: int, noise: float, rng) -> np.ndarray:
    centres = rng.normal(size=(n_clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, n_clusters, n)] + noise * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    emb = clustered(args.n, args.dim, max(10, args.n // 200), 0.05, rng)
    queries = emb[rng.choice(args.n, args.queries, replace=False)]
    queries = queries + 0.02 * rng.normal(size=queries.shape).astype(np.float32)
    ids, cats = np.arange(args.n), ["x"] * args.n

    rows, truth = [], None
    for kind in ("flat", "ivf", "hnsw"):
        t0 = time.perf_counter()
        index = ItemIndex.from_embeddings(ids, emb, cats, index_type=kind, nprobe=args.nprobe)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = [index.search(q, args.k) for q in queries]
        query_s = time.perf_counter() - t0
        got = [{i for i, _ in r} for r in results]
        if truth is None:
            truth = got
        recall = float(np.mean([len(g & t) / args.k for g, t in zip(got, truth, strict=True)]))
        rows.append({"index": kind, "build_s": round(build_s, 3), "qps": round(args.queries / query_s, 1),
                     "ms_per_query": round(1000 * query_s / args.queries, 3),
                     f"recall@{args.k}": round(recall, 4), **{k: v for k, v in index.meta.items()
                                                              if k in ("nlist", "nprobe", "M", "efSearch")}})
    base = rows[0]["qps"]
    for r in rows:
        r["speedup_vs_flat"] = round(r["qps"] / base, 2)

    print(f"n={args.n} dim={args.dim} queries={args.queries} k={args.k}")
    print(f"{'index':6} {'build_s':>8} {'ms/query':>9} {'qps':>9} {'speedup':>8} {'recall':>7}")
    for r in rows:
        print(f"{r['index']:6} {r['build_s']:8.2f} {r['ms_per_query']:9.3f} {r['qps']:9.1f} "
              f"{r['speedup_vs_flat']:8.2f} {r[f'recall@{args.k}']:7.3f}")
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
