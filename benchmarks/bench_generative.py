"""Catalog-constrained generation on the full-catalog protocol, for a seeded sample of users.

    python benchmarks/bench_generative.py --data-dir /tmp/mls4/data --users 50 --backbone smollm2-135m

For each sampled user: the history (train items + the validation item) is the prompt's source
and is excluded; the held-out test item is the target; the generator names k items through the
catalog trie. Prints NDCG@10 / HR@10 beside popularity on the same users, and the latency per
request (p50/p99) and per decoding step. A diagnostic until the generator is a system of
`rayrec evaluate` (all users, bootstrap CIs).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
from rayrec.evaluation.fullcatalog import list_metrics, popularity_lists, select_users
from rayrec.generative.lists import Generator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="a preprocessed run's data dir (items.parquet, histories/)")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--backbone", default="smollm2-135m")
    p.add_argument("--adapter", default=None, help="a LoRA adapter directory (tuned generator)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--beams", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    items = pd.read_parquet(f"{args.data_dir}/items.parquet")
    hist = pd.read_parquet(f"{args.data_dir}/histories")
    users = select_users(hist[hist.test_item >= 0], args.users, args.seed)
    histories = [np.asarray([*h, v] if v >= 0 else h) for h, v in zip(users["history"], users["valid_item"], strict=True)]
    gen = Generator.load(args.backbone, items["title"].to_numpy(), args.adapter)
    t0 = time.time()
    lists = {"generative": gen.lists(histories, args.k, beams=args.beams),
             "popularity": popularity_lists(items["popularity"].to_numpy(), histories, args.k)}
    out = {"users": len(users), "seconds": round(time.time() - t0, 1), "latency": gen.latency()}
    for name, ranked in lists.items():
        rows = [list_metrics(r, int(y), [10]) for r, y in zip(ranked, users["test_item"], strict=True)]
        out[name] = {k: round(float(v), 4) for k, v in pd.DataFrame(rows).mean().items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
