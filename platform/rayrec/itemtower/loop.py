"""The Ray Train worker loop of the item tower: LoRA encoder + head under DeepSpeed ZeRO.

One step, B items of this worker's shard, each with one user state h_b that clicked it:

    t_b     = tower(text_b)                                     (B, dim) text-only item vectors
    S       = h V^T, untrained items masked out                 (B, n)   the warm catalog
    S_text  = S with the batch's B columns replaced by h t^T     every batch item read from text
    S_cal   = S_text with each row's own column back to h_b v_b  the positive read from its ID
    loss    = CE(S_text, item_b) + CE(S_cal, item_b) + lambda mean_jb (h_j t_b - h_j v_b)^2

The first term asks each item's text to win its user's softmax against the warm catalog (and
the other batch items' text): where the item would rank had its ID been learned. Alone it has a
degenerate optimum: inflate every text vector, and the batch's text columns beat the whole
catalog whatever their order. The second term is the price of that: there, the other items'
text vectors are negatives beside a trained positive, so a text vector may only score as high as
the trained vectors it stands in for (DropoutNet's balance, with the dropped items in text form);
the third (``tower.distill_weight``) anchors every batch user's score of a text vector to their
score of the item's trained vector: the scale an ID would have learned.

Validation mirrors serving, where many new items compete at once: every held-out warm item is
read from text (its ID column replaced) and each validation pair's item is ranked among the
warm catalog plus all of them; NDCG@10 / HR@10 over the pairs.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from rayrec.config import RayrecConfig
from rayrec.console import progress
from rayrec.itemtower.model import build_tower, save_tower
from rayrec.itemtower.pairs import TowerData
from rayrec.raytrain.checkpoint import checkpoint_dir_name, gather_trainable
from rayrec.raytrain.config import with_optimisation
from rayrec.raytrain.deepspeed import ds_engine
from rayrec.raytrain.worker import reported_checkpoint, start_worker

VALID_METRIC = "valid_ndcg@10"


def _tokens(tokenizer, texts: list[str], max_length: int, device):
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@torch.no_grad()
def validate(tower, tokenizer, data: TowerData, pairs: np.ndarray, warm_pairs: np.ndarray, max_length: int,
             device) -> dict[str, float]:
    """Serving's situation: every validation item read from text among the warm catalog. Their
    pairs (``pairs``) and as many pairs of warm items (``warm_pairs``) are ranked; NDCG@10 over
    both, so a tower that inflates text vectors (new items on top of everything) loses on the
    warm pairs what it gains on the new ones. Also each half, and the warm pairs' share of
    validation items in their top-10."""
    tower.eval()
    items = data.valid_items
    t = torch.cat([tower(*_tokens(tokenizer, [data.texts[i] for i in items[s : s + 128]], max_length, device))
                   for s in range(0, len(items), 128)])
    both = np.concatenate([pairs, warm_pairs])
    h = torch.as_tensor(data.states[both], device=device)
    y = torch.as_tensor(data.targets[both], device=device)
    cols = torch.as_tensor(items, device=device)
    logits = (h @ torch.as_tensor(data.item_vectors, device=device).T).masked_fill(
        torch.as_tensor(~data.trained, device=device), float("-inf")).index_copy(1, cols, h @ t.T)
    rank = (logits > logits.gather(1, y[:, None])).sum(1).double()
    ndcg = torch.where(rank < 10, 1 / torch.log2(rank + 2), torch.zeros_like(rank))
    new, warm = slice(0, len(pairs)), slice(len(pairs), len(both))
    top = logits[warm].topk(10, dim=1).indices
    tower.train()
    return {VALID_METRIC: float(ndcg.mean()), "valid_new_ndcg@10": float(ndcg[new].mean()),
            "valid_warm_ndcg@10": float(ndcg[warm].mean()), "valid_new_hr@10": float((rank[new] < 10).double().mean()),
            "valid_warm_new_share@10": float(torch.isin(top, cols).double().mean())}


def train_loop_per_worker(loop_cfg: dict) -> None:
    """Ray Train entry. ``loop_cfg``: {"cfg": RayrecConfig dump, "data": TowerData, "head":
    initial W or None}; this worker trains on its share of ``data.train_items``."""
    cfg = RayrecConfig.model_validate(loop_cfg["cfg"])
    tc, data = cfg.tower, loop_cfg["data"]
    rank, world, device = start_worker(cfg.train.torch_threads)
    dim = data.item_vectors.shape[1]
    tower, tokenizer = build_tower(tc, dim, loop_cfg.get("head"), seed=tc.seed)
    tower.to(device).train()
    # the ``train`` section's workers, ZeRO and precision with the tower's optimisation
    engine = ds_engine(tower, with_optimisation(cfg.train, tc, grad_accum_steps=1), tc.max_steps, world)
    rng = np.random.default_rng(tc.seed * 1000 + rank)
    mine = data.train_items[rank::world]  # this worker's items
    if len(mine) < tc.batch_size:
        raise ValueError(f"{len(mine)} tower items on worker {rank} cannot fill tower.batch_size={tc.batch_size}")
    order = np.argsort(data.targets, kind="stable")  # pairs grouped by item: one random click each
    starts = np.searchsorted(data.targets[order], mine)
    counts = np.searchsorted(data.targets[order], mine, side="right") - starts
    valid_pairs = np.flatnonzero(np.isin(data.targets, data.valid_items))
    valid_pairs = np.sort(rng.choice(valid_pairs, size=min(tc.max_valid_pairs, len(valid_pairs)), replace=False))
    warm_pairs = np.flatnonzero(np.isin(data.targets, data.train_items))
    warm_pairs = np.sort(np.random.default_rng(tc.seed).choice(warm_pairs, size=min(len(valid_pairs), len(warm_pairs)),
                                                               replace=False))
    V = torch.as_tensor(data.item_vectors, device=device)
    absent = torch.as_tensor(~data.trained, device=device)
    start = validate(engine.module, tokenizer, data, valid_pairs, warm_pairs, tc.max_length, device)  # frozen
    t0, losses = time.perf_counter(), []
    for step in range(1, tc.max_steps + 1):  # the hot loop
        pick = rng.choice(len(mine), size=tc.batch_size, replace=False)
        items = mine[pick]
        pairs = order[starts[pick] + rng.integers(0, counts[pick])]
        h = torch.as_tensor(data.states[pairs], device=device)  # (B, dim)
        t = engine(*_tokens(tokenizer, [data.texts[i] for i in items], tc.max_length, device))  # (B, dim)
        cols = torch.as_tensor(items, device=device)
        catalog = (h @ V.T).masked_fill(absent, float("-inf"))
        text = h @ t.T  # (B, B): every user against every batch item's text
        own_id = (h * V[cols]).sum(1)  # each row's positive from its trained vector
        calibrated = text.clone()
        calibrated[torch.arange(len(cols)), torch.arange(len(cols))] = own_id
        # score distillation: every batch user scores each text vector as its trained vector
        distill = (text - h @ V[cols].T).pow(2).mean()
        loss = (F.cross_entropy(catalog.index_copy(1, cols, text), cols)
                + F.cross_entropy(catalog.index_copy(1, cols, calibrated), cols) + tc.distill_weight * distill)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        if step % tc.eval_every_steps and step != tc.max_steps:
            if rank == 0:
                progress("step", step, tc.max_steps, loss=losses[-1])
            continue
        metrics = {"step": step, "loss": float(np.mean(losses)), "items_per_s": len(losses) * tc.batch_size
                   * world / (time.perf_counter() - t0), **{f"start_{k}": v for k, v in start.items()}}
        metrics |= validate(engine.module, tokenizer, data, valid_pairs, warm_pairs, tc.max_length, device)
        if rank == 0:
            progress("step", step, tc.max_steps, **{k: v for k, v in metrics.items() if k != "step"})
        state = gather_trainable(engine)  # a collective under ZeRO-3: every rank
        with reported_checkpoint(metrics, checkpoint_dir_name(step, digits=6)) as tmp:
            if rank == 0:
                save_tower(tmp, state, tc, dim, {"step": step, VALID_METRIC: metrics[VALID_METRIC],
                                                 "start": start})
        t0, losses = time.perf_counter(), []
