"""The Ray Train worker loop of the retriever: DDP over the users, validation on the full catalog."""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from rayrec.console import progress
from rayrec.metrics import ndcg_at_k
from rayrec.raytrain.checkpoint import checkpoint_dir_name
from rayrec.raytrain.worker import reported_checkpoint, start_worker
from rayrec.seqrec.config import RetrieverConfig
from rayrec.seqrec.data import training_tensors
from rayrec.seqrec.model import SASRec, save_retriever, sequence_loss
from rayrec.seqrec.scorer import retrieve_topn

log = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"


def _all_reduce(values: list[float], op=None) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def set_lr(opt: torch.optim.Optimizer, rc: RetrieverConfig, progress: float) -> float:
    """lr at ``progress`` (0 -> 1) of the planned training: cosine lr * (1 + cos(pi p)) / 2."""
    lr = rc.lr if rc.lr_schedule == "constant" else rc.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def validate(model: SASRec, rows: list[dict], metric: str) -> dict[str, float]:
    """Full-catalog HR@K / NDCG@K of each user's validation item (train items excluded),
    summed over this rank's users and all-reduced."""
    k = int(metric.split("@")[1])
    rows = [r for r in rows if r["valid_item"] >= 0]
    ks = sorted({10, k})
    sums = np.zeros(2 * len(ks) + 1)
    if rows:
        hist = [np.asarray(r["items"]) for r in rows]
        tops = retrieve_topn(model, hist, max(ks))
        for r, (items, _) in zip(rows, tops, strict=True):
            for j, kk in enumerate(ks):
                sums[2 * j] += ndcg_at_k(items, int(r["valid_item"]), kk)
                sums[2 * j + 1] += float(int(r["valid_item"]) in items[:kk])
        sums[-1] = len(rows)
    model.train()
    total = _all_reduce(sums.tolist())
    n = max(total[-1], 1.0)
    out = {}
    for j, kk in enumerate(ks):
        out[f"valid_ndcg@{kk}"], out[f"valid_hr@{kk}"] = total[2 * j] / n, total[2 * j + 1] / n
    return out


def train_loop_per_worker(loop_cfg: dict) -> None:
    """Ray Train entry. ``loop_cfg``: {"retriever": RetrieverConfig dump, "n_items": int,
    "text_vectors": (n_items, d) array or None, "trained": (n_items,) bool or None}."""
    rc = RetrieverConfig.model_validate(loop_cfg["retriever"])
    n_items = int(loop_cfg["n_items"])
    rank, world, device = start_worker(rc.torch_threads)  # device: the worker's GPU with use_gpu
    torch.manual_seed(rc.seed)
    # Each worker keeps its shard of users as two (users, max_len) int64 tensors: ~3 KB a user.
    rows = list(ray.train.get_dataset_shard("train").iter_rows())
    inputs, targets = training_tensors([r["items"] for r in rows], rc.max_len, n_items)
    inputs, targets = inputs.to(device), targets.to(device)  # once: the whole shard fits
    # DDP needs the same number of steps on every rank: the smallest shard sets the epoch.
    steps = int(_all_reduce([len(rows) // rc.batch_size or 1], dist.ReduceOp.MIN)[0])
    net = SASRec(n_items, rc, loop_cfg.get("text_vectors"), loop_cfg.get("trained"))
    model = ray.train.torch.prepare_model(net)
    opt = torch.optim.AdamW(model.parameters(), lr=rc.lr, weight_decay=rc.weight_decay)
    state = {"epoch": 0, "best": -math.inf, "bad_evals": 0}
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            # weights_only: the run directory is not trusted to hold code (tensors and plain data only)
            saved = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state.update(saved["state"])
        if rank == 0:
            log.info("retriever resumed at epoch %d", state["epoch"])
    resumed_at = state["epoch"]
    gen = torch.Generator().manual_seed(rc.seed * 1000 + rank)
    t0, t_start = time.perf_counter(), time.perf_counter()
    seen, losses = 0, []
    planned = float(rc.max_epochs)  # epochs the lr schedule spans; max_minutes may shorten it
    while state["epoch"] < rc.max_epochs:
        perm = torch.randperm(len(rows), generator=gen)
        for s in range(steps):  # the hot loop: next-item CE at every position of B sequences
            idx = perm[s * rc.batch_size : (s + 1) * rc.batch_size].to(device)
            set_lr(opt, rc, (state["epoch"] + s / steps) / planned)
            loss = sequence_loss(model, inputs[idx], targets[idx], rc, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            seen += len(idx)
        state["epoch"] += 1
        epoch = state["epoch"]
        # Every rank must take the same decisions: the slowest rank's clock decides.
        elapsed = _all_reduce([time.perf_counter() - t_start], dist.ReduceOp.MAX)[0]
        out_of_time = rc.max_minutes is not None and elapsed > 60 * rc.max_minutes
        if rc.max_minutes is not None:  # epochs that fit the budget at this pace (this session's)
            done_here = epoch - resumed_at
            planned = min(planned, resumed_at + done_here * 60 * rc.max_minutes / max(elapsed, 1e-9))
        last = epoch >= rc.max_epochs or out_of_time
        if epoch % rc.eval_every_epochs and not last:
            if rank == 0:  # the console's live line moves every epoch (max_minutes may shorten the run)
                progress("epoch", epoch, max(epoch + 1, min(rc.max_epochs, math.ceil(planned))),
                         loss=float(np.mean(losses)))
            continue
        dt = time.perf_counter() - t0
        metrics = {"epoch": epoch, "start_epoch": resumed_at, "loss": float(np.mean(losses)),
                   "sequences_per_s": seen * world / dt,
                   "lr": opt.param_groups[0]["lr"]}
        metrics |= validate(net, rows, rc.early_stopping_metric)
        value = metrics[f"valid_{rc.early_stopping_metric}"]
        if value > state["best"]:
            state["best"], state["bad_evals"] = value, 0
        else:
            state["bad_evals"] += 1
        metrics["best_" + rc.early_stopping_metric] = state["best"]
        stop = last or state["bad_evals"] >= rc.patience
        if rank == 0:
            total = epoch if stop else max(epoch + 1, min(rc.max_epochs, math.ceil(planned)))
            progress("epoch", epoch, total, **{k: v for k, v in metrics.items() if k != "epoch"})
        with reported_checkpoint(metrics, checkpoint_dir_name(epoch, "epoch", 5)) as tmp:
            if rank == 0:  # DDP: every rank holds the same weights
                save_retriever(tmp, net, rc, {"epoch": epoch, "metrics": metrics})
                torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "state": state},
                           os.path.join(tmp, STATE_FILE))
        t0, seen, losses = time.perf_counter(), 0, []
        if stop:
            break
