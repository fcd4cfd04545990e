"""Explanations and generated candidates as the endpoint makes them, on a trained run.

For a seeded sample of users, the endpoint's own deployments run in this process (the same
classes Serve hosts): retrieval gives each user's top items, the generation deployment writes
one sentence for each of the top ``--items`` (no budget: every sentence is finished, so the
latency per explanation and per token is the model's own) and the grounding check judges it;
then the generation deployment names ``serve.generation.k`` items for the same users.

    python benchmarks/bench_explanations.py --run-dir rayrec_ml_latest_small --users 30 --out explain.json

Reports the grounding rate (and what failed it), seconds per explanation and ms per token
(p50/p99), generation seconds per request (p50/p99), and prints five explanations verbatim.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a run with data and an index (a retriever helps)")
    ap.add_argument("--config", default="configs/ml-latest-small.yaml")
    ap.add_argument("--users", type=int, default=30)
    ap.add_argument("--items", type=int, default=3, help="explanations per user (the slate's top)")
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--adapter", default=None, help="a LoRA adapter for the generator (default zero-shot)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path for the figures")
    args = ap.parse_args()

    import torch
    from rayrec.config import load_config
    from rayrec.serving.app import _absolute_dirs
    from rayrec.serving.generation import GenerationDeployment
    from rayrec.serving.retrieval import RetrievalDeployment, RetrievalRequest

    torch.set_num_threads(args.threads)
    cfg = _absolute_dirs(load_config(args.config, {
        "run_dir": args.run_dir, "serve.generation.enabled": True, "serve.generation.backbone": args.backbone,
        "serve.generation.adapter": args.adapter, "serve.generation.num_cpus": args.threads}))
    shared = cfg.model_dump(mode="json")
    retrieval = RetrievalDeployment.func_or_class(shared)
    generation = GenerationDeployment.func_or_class(shared)
    users = sorted(retrieval.store.user_idx_of)
    rng = np.random.default_rng(args.seed)
    sample = [users[i] for i in rng.choice(len(users), size=min(args.users, len(users)), replace=False)]

    rows, examples = [], []
    for n, user in enumerate(sample, 1):
        cand = asyncio.run(retrieval.retrieve(RetrievalRequest(user_id=user, num_candidates=args.items)))
        out = generation.explain(cand["history"], None, cand["item_idx"][: args.items], deadline=time.time() + 3600)
        for e, title in zip(out, cand["title"], strict=False):
            rows.append(e)
            if e["text"] and len(examples) < 5:
                examples.append({"user": user, "item": title, "explanation": e["text"], "status": e["status"]})
        print(f"explained {n}/{len(sample)} users, {sum(r['seconds'] for r in rows):.0f}s of generation",
              file=sys.stderr, flush=True)
    written = [r for r in rows if r["text"] is not None]
    grounded = sum(r["status"] == "explained" for r in written)
    unsupported = Counter(u for r in written for u in r.get("unsupported", []))
    secs = np.array([r["seconds"] for r in written])
    ms_tok = np.array([1000 * r["seconds"] / max(r["tokens"], 1) for r in written])

    gen_secs = []
    for user in sample:
        history = retrieval.store.history_of.get(retrieval.store.user_idx_of[user], [])
        gen_secs.append(generation.generate(history, None, cfg.serve.generation.k)["seconds"])
    gen_secs = np.array(gen_secs)

    pct = lambda a, q: round(float(np.percentile(a, q)), 3) if len(a) else None  # noqa: E731
    result = {
        "model": generation.version, "users": len(sample), "explanations_asked": len(rows),
        "explanations_written": len(written), "grounded": grounded,
        "grounding_rate": round(grounded / max(len(written), 1), 3),
        "most_common_unsupported": unsupported.most_common(10),
        "explain_seconds": {"p50": pct(secs, 50), "p99": pct(secs, 99)},
        "explain_ms_per_token": {"p50": pct(ms_tok, 50), "p99": pct(ms_tok, 99)},
        "generate_seconds": {"k": cfg.serve.generation.k, "beams": cfg.serve.generation.beams,
                             "p50": pct(gen_secs, 50), "p99": pct(gen_secs, 99)},
        "threads": args.threads, "examples": examples,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
