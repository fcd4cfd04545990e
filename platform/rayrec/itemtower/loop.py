"""The Ray Train worker loop of the item tower: LoRA encoder + head under DeepSpeed ZeRO.

One step, B items of this worker's shard, each with one user state h that clicked it:

    t_b    = tower(text_b)                                  (B, dim)   text-only item vectors
    logits = h V^T, columns of the batch's items replaced by h t^T   (B, n) warm catalog
    loss   = CE(logits, item_b)                             untrained items masked out

so each item's text must win the user's softmax against the warm catalog's trained vectors
(and against the other batch items' text): where the item would have been ranked had its ID
been learned. Validation: held-out warm items, read from text alone, NDCG@10 of their users.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import ray.train
import torch
import torch.nn.functional as F

from rayrec.config import RayrecConfig
from rayrec.console import progress
from rayrec.itemtower.model import build_tower, save_tower
from rayrec.itemtower.pairs import TowerData
from rayrec.train.checkpoint import gather_trainable
from rayrec.train.config import TrainConfig
from rayrec.train.deepspeed import build_ds_config

VALID_METRIC = "valid_ndcg@10"


def optimisation(cfg: RayrecConfig) -> TrainConfig:
    """The ``train`` section's scaling with the tower's optimisation (what build_ds_config reads)."""
    tc = cfg.tower
    return TrainConfig.model_validate(cfg.train.model_dump() | {
        "lr": tc.lr, "batch_size": tc.batch_size, "grad_accum_steps": 1, "warmup_ratio": tc.warmup_ratio,
        "weight_decay": tc.weight_decay, "max_grad_norm": tc.max_grad_norm, "max_steps": tc.max_steps,
        "seed": tc.seed})


def _tokens(tokenizer, texts: list[str], max_length: int, device):
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@torch.no_grad()
def validate(tower, tokenizer, data: TowerData, pairs: np.ndarray, max_length: int, device) -> dict[str, float]:
    """Text-only rank of each validation pair's item among the warm catalog (NDCG@10, HR@10)."""
    tower.eval()
    items = np.unique(data.targets[pairs])
    t = torch.cat([tower(*_tokens(tokenizer, [data.texts[i] for i in items[s : s + 128]], max_length, device))
                   for s in range(0, len(items), 128)])
    row = {int(i): r for r, i in enumerate(items)}
    h = torch.as_tensor(data.states[pairs], device=device)
    y = data.targets[pairs]
    logits = h @ torch.as_tensor(data.item_vectors, device=device).T
    logits[:, torch.as_tensor(~data.trained, device=device)] = float("-inf")
    own = (h * t[[row[int(i)] for i in y]]).sum(1)
    logits[torch.arange(len(y)), torch.as_tensor(y, device=device)] = own  # the item as if new
    rank = (logits > own[:, None]).sum(1).double()
    tower.train()
    return {VALID_METRIC: float(torch.where(rank < 10, 1 / torch.log2(rank + 2), torch.zeros_like(rank)).mean()),
            "valid_hr@10": float((rank < 10).double().mean()),
            "valid_median_rank": float(rank.median() + 1)}


def train_loop_per_worker(loop_cfg: dict) -> None:
    """Ray Train entry. ``loop_cfg``: {"cfg": RayrecConfig dump, "data": TowerData, "head":
    initial W or None}; this worker trains on its share of ``data.train_items``."""
    import deepspeed

    cfg = RayrecConfig.model_validate(loop_cfg["cfg"])
    tc, data = cfg.tower, loop_cfg["data"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if cfg.train.torch_threads is not None:
        torch.set_num_threads(cfg.train.torch_threads or os.cpu_count() or 1)
    dim = data.item_vectors.shape[1]
    tower, tokenizer = build_tower(tc, dim, loop_cfg.get("head"), seed=tc.seed)
    tower.to(device).train()
    engine, _, _, _ = deepspeed.initialize(
        model=tower, model_parameters=[p for p in tower.parameters() if p.requires_grad],
        config=build_ds_config(optimisation(cfg), tc.max_steps, world), dist_init_required=False)
    rng = np.random.default_rng(tc.seed * 1000 + rank)
    mine = data.train_items[rank::world]  # this worker's items
    if len(mine) < tc.batch_size:
        raise ValueError(f"{len(mine)} tower items on worker {rank} cannot fill tower.batch_size={tc.batch_size}")
    order = np.argsort(data.targets, kind="stable")  # pairs grouped by item: one random click each
    starts = np.searchsorted(data.targets[order], mine)
    counts = np.searchsorted(data.targets[order], mine, side="right") - starts
    valid_pairs = np.flatnonzero(np.isin(data.targets, data.valid_items))
    valid_pairs = np.sort(rng.choice(valid_pairs, size=min(tc.max_valid_pairs, len(valid_pairs)), replace=False))
    V = torch.as_tensor(data.item_vectors, device=device)
    absent = torch.as_tensor(~data.trained, device=device)
    start = validate(engine.module, tokenizer, data, valid_pairs, tc.max_length, device)  # the frozen tower
    t0, losses = time.perf_counter(), []
    for step in range(1, tc.max_steps + 1):  # the hot loop
        pick = rng.choice(len(mine), size=tc.batch_size, replace=False)
        items = mine[pick]
        pairs = order[starts[pick] + rng.integers(0, counts[pick])]
        h = torch.as_tensor(data.states[pairs], device=device)  # (B, dim)
        t = engine(*_tokens(tokenizer, [data.texts[i] for i in items], tc.max_length, device))  # (B, dim)
        cols = torch.as_tensor(items, device=device)
        logits = (h @ V.T).masked_fill(absent, float("-inf")).index_copy(1, cols, h @ t.T)
        loss = F.cross_entropy(logits, cols)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        if step % tc.eval_every_steps and step != tc.max_steps:
            if rank == 0:
                progress("step", step, tc.max_steps, loss=losses[-1])
            continue
        metrics = {"step": step, "loss": float(np.mean(losses)), "items_per_s": len(losses) * tc.batch_size
                   * world / (time.perf_counter() - t0), **{f"start_{k}": v for k, v in start.items()}}
        metrics |= validate(engine.module, tokenizer, data, valid_pairs, tc.max_length, device)
        if rank == 0:
            progress("step", step, tc.max_steps, **{k: v for k, v in metrics.items() if k != "step"})
        state = gather_trainable(engine)  # a collective under ZeRO-3: every rank
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_tower(tmp, state, tc, dim, {"step": step, VALID_METRIC: metrics[VALID_METRIC],
                                                 "start": start})
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step_{step:06d}")
        t0, losses = time.perf_counter(), []
