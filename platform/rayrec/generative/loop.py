"""The Ray Train worker loop of the generator: a causal LM + LoRA under DeepSpeed ZeRO, trained
to write the next item's title (loss on the title tokens only), validated by held-out loss.

DeepSpeed's config is the shared builder (:func:`rayrec.raytrain.deepspeed.build_ds_config`) fed
with the ``train`` section's scaling and the ``generator`` section's optimisation. Every
``eval_every_steps`` (and at the end) the workers report the validation loss with a checkpoint
holding the LoRA adapter; the driver keeps the best by that loss. A failed worker starts the
tuning over (runs are minutes long; the ranker's loop shows resuming mid-run).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from rayrec.config import RayrecConfig
from rayrec.console import progress
from rayrec.generative.adapter import save_adapter
from rayrec.generative.config import GeneratorConfig
from rayrec.generative.examples import collate, target_exact, target_logits, target_nll, tokenize
from rayrec.models.backbone import (
    backbone_family,
    default_lora_targets,
    is_causal_family,
    resolve_backbone,
)
from rayrec.raytrain.checkpoint import checkpoint_dir_name
from rayrec.raytrain.config import with_optimisation
from rayrec.raytrain.deepspeed import ds_engine
from rayrec.raytrain.worker import reported_checkpoint, start_worker

VALID_METRIC = "valid_loss"  # what Ray keeps checkpoints by (lowest first)


def build_lora_lm(gc: GeneratorConfig):
    """(causal LM wrapped with a fresh LoRA adapter, its tokenizer)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_backbone(gc.backbone)
    family = backbone_family(path)
    if not is_causal_family(family):
        raise ValueError(f"generator.backbone {gc.backbone!r} is a {family} encoder: the generator needs a causal LM")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(gc.seed)
    lora = LoraConfig(
        task_type="CAUSAL_LM", r=gc.lora.r, lora_alpha=gc.lora.alpha, lora_dropout=gc.lora.dropout,
        target_modules=gc.lora.target_modules or default_lora_targets(family),
        fan_in_fan_out=family == "gpt2",  # GPT-2 stores attention weights as Conv1D
    )
    return get_peft_model(model, lora), AutoTokenizer.from_pretrained(path)


def batches(encoded: list, batch_size: int, seed: int) -> Iterator[list]:
    """Shuffled batches of ``encoded`` forever, a new order every epoch (the last partial batch
    of an epoch is dropped: every step sees batch_size examples)."""
    if len(encoded) < batch_size:
        raise ValueError(f"{len(encoded)} examples on this worker cannot fill generator.batch_size={batch_size}")
    rng = random.Random(seed)
    while True:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield [encoded[j] for j in order[i : i + batch_size]]


@torch.no_grad()
def validate(model, encoded: list, batch_size: int, pad_id: int, rank: int, world: int, device) -> dict[str, float]:
    """Mean target-token loss and whole-title greedy accuracy over the validation rows, this
    rank's slice all-reduced. Every rank runs the same number of forward passes (ZeRO-3
    gathers parameters collectively), padding its slice with rows that are not counted."""
    per_rank = math.ceil(len(encoded) / world)
    mine = encoded[rank * per_rank : (rank + 1) * per_rank]
    n_real = len(mine)
    mine = mine + encoded[:1] * (per_rank - n_real)
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # nll, target tokens, exact titles
    for i in range(0, len(mine), batch_size):
        batch = collate(mine[i : i + batch_size], pad_id).to(device)
        logits = target_logits(model, batch)
        nll, count = target_nll(logits, batch.labels)
        exact = target_exact(logits, batch.labels)
        real = (torch.arange(i, i + len(nll), device=device) < n_real).to(nll.dtype)
        sums += torch.stack([(nll * real).sum(), (count * real).sum(), (exact * real).sum()]).double().cpu()
    model.train()
    if dist.is_initialized():
        dist.all_reduce(sums)
    return {"valid_loss": float(sums[0] / max(sums[1], 1)), "valid_exact": float(sums[2] / len(encoded))}


def train_loop_per_worker(loop_cfg: dict) -> None:
    """Ray Train entry. ``loop_cfg``: {"cfg": RayrecConfig dump}; datasets ``train`` (this
    worker's shard) and ``valid`` (every row), both of {"prompt", "target"} texts."""
    cfg = RayrecConfig.model_validate(loop_cfg["cfg"])
    gc = cfg.generator
    rank, world, device = start_worker(cfg.train.torch_threads)
    model, tokenizer = build_lora_lm(gc)
    model.train()  # LoRA dropout
    # the ``train`` section's workers, ZeRO and precision with the generator's optimisation
    engine = ds_engine(model, with_optimisation(cfg.train, gc), gc.max_steps, world)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train = tokenize(tokenizer, list(ray.train.get_dataset_shard("train").iter_rows()))
    valid = tokenize(tokenizer, list(ray.train.get_dataset_shard("valid").iter_rows()))
    stream = batches(train, gc.batch_size, gc.seed * 1000 + rank)
    t0, t_start, seen, tokens, losses = time.perf_counter(), time.perf_counter(), 0, 0, []
    step = 0
    while step < gc.max_steps:  # the hot loop: one micro-batch, loss on its title tokens
        batch = collate(next(stream), pad_id).to(device)
        nll, count = target_nll(target_logits(engine, batch), batch.labels)
        loss = nll.sum() / count.sum()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        seen, tokens = seen + len(nll), tokens + int(batch.attention_mask.sum())
        if engine.global_steps == step:  # inside a gradient-accumulation window
            continue
        step = engine.global_steps
        done = step >= gc.max_steps
        evaluate = step % gc.eval_every_steps == 0 or done
        if not (evaluate or step % gc.log_every_steps == 0):
            if rank == 0:
                progress("step", step, gc.max_steps, loss=losses[-1])
            continue
        dt = time.perf_counter() - t0
        metrics = {"step": step, "loss": float(np.mean(losses)), "lr": float(engine.get_lr()[0]),
                   "epoch": step * gc.batch_size * gc.grad_accum_steps / max(len(train), 1),
                   "examples_per_s": seen * world / dt, "tokens_per_s": tokens * world / dt,
                   "seconds": time.perf_counter() - t_start}
        if not evaluate:
            if rank == 0:
                progress("step", step, gc.max_steps, **{k: v for k, v in metrics.items() if k != "step"})
            ray.train.report(metrics)
        else:
            metrics |= validate(engine.module, valid, gc.batch_size, pad_id, rank, world, device)
            if rank == 0:
                progress("step", step, gc.max_steps, **{k: v for k, v in metrics.items() if k != "step"})
            with reported_checkpoint(metrics, checkpoint_dir_name(step)) as tmp:
                save_adapter(engine, tmp, {"backbone": gc.backbone, "history_items": gc.history_items,
                                           "step": step, VALID_METRIC: metrics[VALID_METRIC]}, rank)
        t0, seen, tokens, losses = time.perf_counter(), 0, 0, []
