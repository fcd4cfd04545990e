"""Training throughput and memory: Ray Train + DeepSpeed loop vs a plain PyTorch + peft loop.

Same model (default: embedded MiniLM cross-encoder + LoRA), same examples, same collation,
loss and optimizer settings, in the same run. Reports steady-state samples/s (the second half
of the steps), the overhead ratio plain/ray, and rank-0 peak RSS per ZeRO stage.

    python benchmarks/bench_train.py --out bench_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GENRES = ["Action", "Comedy", "Drama", "Horror", "Sci-Fi", "Romance", "Thriller", "Animation"]
WORDS = ["star", "night", "city", "love", "war", "dark", "story", "last", "king", "return", "man", "girl", "house", "road", "dream"]


def _title(rng: random.Random) -> str:
    name = " ".join(rng.choice(WORDS).title() for _ in range(rng.randint(1, 4)))
    return f"{name} ({rng.randint(1950, 2018)}) | Genres: {', '.join(rng.sample(GENRES, 2))}"


def write_examples(data_dir: Path, n: int, n_neg: int, hist_len: int, seed: int = 0) -> None:
    """Movie-like examples in the schema's layout (examples/train only)."""
    from rayrec.data.schema import EXAMPLE_COLUMNS, EXAMPLES_DIR
    from rayrec.data.text import render_history

    rng = random.Random(seed)
    rows = [{
        "user_idx": u, "history": list(range(hist_len)),
        "history_text": render_history([_title(rng) for _ in range(hist_len)]),
        "candidates": list(range(n_neg + 1)), "labels": [1.0] + [0.0] * n_neg,
        "candidate_texts": [_title(rng) for _ in range(n_neg + 1)], "timestamp": u,
    } for u in range(n)]
    out = data_dir / EXAMPLES_DIR / "train"
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(EXAMPLE_COLUMNS)).to_parquet(out / "part-0.parquet")


def plain_loop(cfg, data_dir: Path, steps: int) -> dict:
    """Single-process torch + peft: the same ranker, batches, loss, AdamW, clipping, schedule."""
    import torch
    from rayrec.models.losses import ranking_loss
    from rayrec.models.ranker import build_ranker, train_scores

    torch.manual_seed(cfg.train.seed)
    df = pd.read_parquet(data_dir / "examples" / "train")
    model, collator = build_ranker(cfg.model, seed=cfg.train.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    rng, bs, half = random.Random(0), cfg.train.batch_size, steps // 2
    for step in range(steps):
        if step == half:
            t0, seen, toks = time.perf_counter(), 0, 0
        b = df.iloc[(step * bs) % (len(df) - bs):][:bs]
        scores, mask, n_tok = train_scores(model, collator, list(b.history_text),
                                           [list(c) for c in b.candidate_texts], rng, "cpu")
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1.0
        loss = ranking_loss(cfg.model.loss, scores, labels, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        opt.step()
        sched.step()
        if step >= half:
            seen, toks = seen + bs, toks + n_tok
    dt = time.perf_counter() - t0
    return {"samples_per_s": seen / dt, "tokens_per_s": toks / dt,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def ray_loop(cfg, stage: int, workers: int, name: str) -> dict:
    import torch
    from rayrec.train.trainer import run_training

    tc = cfg.train.model_copy(update={
        "num_workers": workers, "run_name": name,
        "deepspeed": cfg.train.deepspeed.model_copy(update={"zero_stage": stage}),
        "placement_strategy": "SPREAD",
        # Same intra-op threads as the plain loop: a fractional-CPU worker would get 1.
        "torch_threads": torch.get_num_threads() // workers or 1,
        # Leave a CPU for Ray Data's reads on a 2-core laptop (workers would starve it).
        "resources_per_worker": {"CPU": 1.0 / max(workers, 2)},
    })
    res = run_training(cfg.model_copy(update={"train": tc}))
    m = res.metrics
    return {k: m[k] for k in ("samples_per_s", "tokens_per_s", "peak_rss_mb", "step")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--negatives", type=int, default=4)
    ap.add_argument("--stages", default="0,1,2,3")
    ap.add_argument("--memory-workers", type=int, default=2)
    args = ap.parse_args()

    import torch
    from rayrec.config import RayrecConfig
    from rayrec.runtime import init_ray

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    write_examples(tmp / "data", n=args.steps * args.batch_size * 2 + 64, n_neg=args.negatives,
                   hist_len=10)
    cfg = RayrecConfig.model_validate({
        "run_dir": str(tmp), "data": {"out": str(tmp / "data")},
        # No catalog here, so no popularity prior (its cost is one multiply-add per score).
        "model": {"backbone": args.backbone, "max_length": args.max_length,
                  "popularity_prior": False},
        "train": {"batch_size": args.batch_size, "max_steps": args.steps, "shuffle_buffer": 0,
                  "log_every_steps": args.steps // 2, "checkpoint_every_steps": args.steps,
                  "warmup_ratio": 0.0, "max_failures": 0},
    })
    init_ray(cfg.ray)
    rows = []
    plain = plain_loop(cfg, tmp / "data", args.steps)
    rows.append({"run": "plain torch+peft", "workers": 1, "zero_stage": None, **plain})
    default_stage = cfg.train.deepspeed.zero_stage
    ray1 = ray_loop(cfg, default_stage, 1, "overhead")
    rows.append({"run": "ray train+deepspeed", "workers": 1, "zero_stage": default_stage, **ray1})
    for stage in [int(s) for s in args.stages.split(",")]:
        r = ray_loop(cfg, stage, args.memory_workers, f"mem_zero{stage}")
        rows.append({"run": "ray train+deepspeed", "workers": args.memory_workers,
                     "zero_stage": stage, **r})
    overhead = plain["samples_per_s"] / ray1["samples_per_s"]
    report = {
        "backbone": args.backbone, "steps": args.steps, "batch_size": args.batch_size,
        "max_length": args.max_length, "candidates_per_example": args.negatives + 1,
        "overhead_ratio_plain_over_ray_1worker": overhead, "runs": rows,
        "torch_threads": torch.get_num_threads(),
        "note": "samples/s over the second half of the steps; peak_rss_mb = rank-0 process max RSS",
    }
    print(f"{'run':<22}{'workers':>8}{'zero':>6}{'samples/s':>11}{'tokens/s':>10}{'peak MB':>9}")
    for r in rows:
        print(f"{r['run']:<22}{r['workers']:>8}{str(r['zero_stage']):>6}{r['samples_per_s']:>11.2f}"
              f"{r['tokens_per_s']:>10.0f}{r['peak_rss_mb']:>9.0f}")
    print(f"overhead (plain samples/s / ray 1-worker samples/s): {overhead:.3f}x")
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
