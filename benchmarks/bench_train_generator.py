"""The generator's training loop, Ray Train + DeepSpeed vs a plain PyTorch + peft loop.

Same causal LM + LoRA (``generator.*``), same tuning examples (``build_examples`` on a
preprocessed run), same batches, loss (title tokens only), AdamW, clipping and schedule, one
worker, in the same run. Time per optimizer step over the second half of the steps (the first
half warms caches and the allocator): the Ray loop's own ``examples_per_s`` over its last
logging window, the plain loop's wall clock over the same steps.

    python benchmarks/bench_train_generator.py --data rayrec_output/data --out bench_gen.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from rayrec.config import RayrecConfig, load_config
from rayrec.generative.examples import build_examples, collate, target_logits, target_nll, tokenize
from rayrec.generative.loop import batches, build_lora_lm
from rayrec.generative.trainer import run_generator_training
from rayrec.models.backbone import resolve_backbone
from rayrec.runtime import init_ray
from transformers import AutoTokenizer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def plain_loop(cfg: RayrecConfig, steps: int) -> dict[str, float]:
    """Single process, no Ray, no DeepSpeed: the loop of generative/loop.py written with torch."""
    gc = cfg.generator
    torch.set_num_threads(cfg.train.torch_threads or os.cpu_count() or 1)
    model, tokenizer = build_lora_lm(gc)
    model.train()
    train_rows, _ = build_examples(cfg.data_dir, gc, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stream = batches(tokenize(tokenizer, train_rows), gc.batch_size, gc.seed * 1000)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=gc.lr, weight_decay=gc.weight_decay)
    warmup = max(int(round(gc.warmup_ratio * steps)), 1)  # DeepSpeed's WarmupDecayLR, linear
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / warmup if s < warmup else max(0.0, (steps - s) / max(steps - warmup, 1)))
    half = steps // 2
    for step in range(steps):
        if step == half:
            t0, seen = time.perf_counter(), 0
        batch = collate(next(stream), pad_id)
        nll, count = target_nll(target_logits(model, batch), batch.labels)
        loss = nll.sum() / count.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, gc.max_grad_norm)
        opt.step()
        sched.step()
        if step >= half:
            seen += len(nll)
    dt = time.perf_counter() - t0
    return {"examples_per_s": seen / dt, "seconds_per_step": dt / (steps - half)}


def ray_loop(cfg: RayrecConfig, steps: int) -> dict[str, float]:
    """`rayrec train-generator` itself, one worker: its examples/s over the last logging window
    (the second half of the steps; the validation after it is not in the window)."""
    result = run_generator_training(cfg)
    eps = result["examples_per_s"]
    return {"examples_per_s": eps, "seconds_per_step": cfg.generator.batch_size / eps,
            "fit_seconds": result["fit_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a preprocessed data dir (rayrec preprocess)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--history-items", type=int, default=5)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_gen_"))
    half = args.steps // 2
    cfg = load_config(None, {
        "run_dir": str(tmp), "data.out": str(Path(args.data).resolve()),
        "generator.backbone": args.backbone, "generator.batch_size": args.batch_size,
        "generator.history_items": args.history_items, "generator.max_steps": args.steps,
        "generator.log_every_steps": half, "generator.eval_every_steps": args.steps,
        "generator.max_valid_users": 8, "train.num_workers": 1, "train.torch_threads": 0,
        "train.max_failures": 0,
    })
    AutoTokenizer.from_pretrained(resolve_backbone(args.backbone))  # a first run converts the model once
    init_ray(cfg.ray)
    plain = plain_loop(cfg, args.steps)
    ray_ = ray_loop(cfg, args.steps)
    ratio = ray_["seconds_per_step"] / plain["seconds_per_step"]
    report = {"backbone": args.backbone, "steps": args.steps, "batch_size": args.batch_size,
              "history_items": args.history_items, "torch_threads": torch.get_num_threads(),
              "plain": plain, "ray_train_deepspeed": ray_, "ratio_ray_over_plain_per_step": ratio,
              "note": "per-step time over the second half of the steps; one worker; same examples"}
    print(f"plain torch+peft: {plain['seconds_per_step']:.3f} s/step; Ray Train + DeepSpeed: "
          f"{ray_['seconds_per_step']:.3f} s/step; ratio {ratio:.3f}x")
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
