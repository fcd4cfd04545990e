"""The per-worker training function run by Ray Train: DeepSpeed engine, hot loop, validation."""

from __future__ import annotations

import hashlib
import logging
import math
import random
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from rayrec.config import RayrecConfig
from rayrec.console import progress
from rayrec.metrics import hit_rate_at_k, ndcg_at_k, reciprocal_rank
from rayrec.models.losses import ranking_loss
from rayrec.models.prior import ranker_priors
from rayrec.models.ranker import build_ranker, score_lists, train_scores, warm_start
from rayrec.raytrain.checkpoint import checkpoint_dir_name, restore_checkpoint
from rayrec.raytrain.deepspeed import ds_engine
from rayrec.raytrain.worker import reported_checkpoint, start_worker
from rayrec.train.checkpoint import write_checkpoint

log = logging.getLogger("rayrec.train")
TRAIN_COLUMNS = ["history_text", "candidates", "candidate_texts", "labels"]
RETRIEVAL_COLUMN = "retrieval_scores"  # mined examples (rayrec.seqrec.mining): the retriever's log-lift
CHECKPOINT_SCORE = "checkpoint_score"  # what Ray ranks checkpoints by: the validation metric


def ranking_metrics(scores: Sequence[np.ndarray], ks: Sequence[int] = (10,)) -> dict[str, list[float]]:
    """Per-list ndcg@k / hr@k / mrr with candidate 0 the positive (ties count against it)."""
    out: dict[str, list[float]] = {f"{m}@{k}": [] for k in ks for m in ("ndcg", "hr")} | {"mrr": []}
    for s in scores:
        idx = np.arange(len(s))
        ranked = np.lexsort((idx == 0, -np.asarray(s, dtype=np.float64)))  # ties: positive last
        for k in ks:
            out[f"ndcg@{k}"].append(ndcg_at_k(ranked, 0, k))
            out[f"hr@{k}"].append(hit_rate_at_k(ranked, 0, k))
        out["mrr"].append(reciprocal_rank(ranked, 0))
    return out


def _metric_k(name: str) -> int:
    return int(name.split("@")[1]) if "@" in name else 10


def validate(engine, collator, rows: list[dict], cfg: RayrecConfig, rank: int, world: int,
             device, item_prior: np.ndarray | None = None) -> dict[str, float]:
    """Score this rank's slice of the validation rows and all-reduce the means."""
    n_cand = min(len(r["candidate_texts"]) for r in rows)  # equal work per rank (ZeRO-3)
    n_cand = min(n_cand, cfg.train.valid_candidates or n_cand)
    per_rank = math.ceil(len(rows) / world)
    mine = rows[rank * per_rank : (rank + 1) * per_rank]
    n_real = len(mine)
    mine = mine + [rows[0]] * (per_rank - n_real)  # padding rows are scored, not counted
    engine.module.eval()
    retrieval = ([list(r[RETRIEVAL_COLUMN])[:n_cand] for r in mine]
                 if mine and RETRIEVAL_COLUMN in mine[0] else None)
    priors = ranker_priors(cfg.model, item_prior, [list(r["candidates"])[:n_cand] for r in mine], retrieval)
    scores = score_lists(
        engine.module, collator, [r["history_text"] for r in mine],
        [list(r["candidate_texts"])[:n_cand] for r in mine], cfg.model.score_batch_size, device,
        priors,
    )
    engine.module.train()
    per = ranking_metrics(scores[:n_real], ks=sorted({10, _metric_k(cfg.train.early_stopping_metric)}))
    names = sorted(per)
    sums = torch.tensor([sum(per[m]) for m in names] + [n_real], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(sums)
    return {f"valid_{m}": float(sums[i] / max(sums[-1].item(), 1)) for i, m in enumerate(names)}


def failure_marker(cfg: RayrecConfig) -> Path:
    """The file that records an injected failure already happened (one per run)."""
    key = hashlib.sha1(f"{cfg.checkpoint_dir}/{cfg.train.run_name}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"rayrec_injected_failure_{key}"


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on GPU, else this process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _maybe_inject_failure(cfg: RayrecConfig, step: int, rank: int) -> None:
    # Chaos testing: fail once (marker file) so the run must recover from its last checkpoint.
    if cfg.train.fail_at_step != step or rank != 0:
        return
    marker = failure_marker(cfg)
    if not marker.exists():
        marker.write_text(str(step))
        raise RuntimeError(f"injected failure at step {step} (train.fail_at_step)")


def train_loop_per_worker(loop_cfg: dict) -> None:
    """Ray Train worker entry point. ``loop_cfg``: {"cfg": RayrecConfig dump, "total_steps": int,
    "has_valid": bool, "item_prior": per-item popularity prior or None, "examples": examples_source}."""
    cfg = RayrecConfig.model_validate(loop_cfg["cfg"])
    tc, total_steps = cfg.train, int(loop_cfg["total_steps"])
    item_prior = loop_cfg.get("item_prior")
    rank, world, device = start_worker(tc.torch_threads)
    torch.manual_seed(tc.seed)
    model, collator = build_ranker(cfg.model, seed=tc.seed)
    if loop_cfg.get("examples") == "retriever":  # re-ordering the retriever's lists: start at its order
        model.start_from_retrieval()
    if tc.init_from:
        warm_start(model, tc.init_from)
    model.train()  # from_pretrained returns eval mode; LoRA dropout needs train mode
    engine = ds_engine(model, tc, total_steps, world)
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "best": -math.inf, "bad_evals": 0}
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            client = restore_checkpoint(d, engine)
        state.update({k: client[k] for k in state if k in client})
        if rank == 0:
            log.info("resumed from %s at step %d", ckpt.path, state["step"])
    valid_rows = list(ray.train.get_dataset_shard("valid").iter_rows()) if loop_cfg["has_valid"] else []
    train_shard = ray.train.get_dataset_shard("train")
    start_step = state["step"]
    rng = random.Random(tc.seed * 1000 + rank * 7919 + start_step)
    t0, seen, toks, losses, stop = time.perf_counter(), 0, 0, [], False

    while state["step"] < total_steps and not stop:
        batches = train_shard.iter_batches(
            batch_size=tc.batch_size, batch_format="pandas", drop_last=True,
            local_shuffle_buffer_size=tc.shuffle_buffer or None, local_shuffle_seed=tc.seed + state["epoch"],
        )
        for i, batch in enumerate(batches):
            if i < state["batches_in_epoch"]:  # resumed mid-epoch: skip what was trained
                continue
            priors = ranker_priors(cfg.model, item_prior, list(batch["candidates"]),
                                   list(batch[RETRIEVAL_COLUMN]) if RETRIEVAL_COLUMN in batch else None)
            scores, mask, n_tok = train_scores(
                engine, collator, list(batch["history_text"]), [list(c) for c in batch["candidate_texts"]],
                rng, device, priors,
            )
            labels = torch.zeros_like(scores, dtype=torch.float32)
            for r, lab in enumerate(batch["labels"]):
                labels[r, : len(lab)] = torch.as_tensor(np.asarray(lab, dtype=np.float32))
            loss = ranking_loss(cfg.model.loss, scores, labels, mask)
            engine.backward(loss)
            engine.step()
            state["batches_in_epoch"] = i + 1
            seen, toks = seen + len(batch), toks + n_tok
            losses.append(loss.item())
            if engine.global_steps == state["step"]:  # inside a gradient-accumulation window
                continue
            state["step"] = step = engine.global_steps
            _maybe_inject_failure(cfg, step, rank)
            done = step >= total_steps
            do_eval = bool(valid_rows) and (step % tc.eval_every_steps == 0 or done)
            do_ckpt = step % tc.checkpoint_every_steps == 0 or done or do_eval
            if not (do_eval or do_ckpt or step % tc.log_every_steps == 0):
                if rank == 0:  # the console's live line moves every step
                    progress("step", step, total_steps, loss=losses[-1])
                continue
            dt = time.perf_counter() - t0
            metrics = {
                "step": step, "start_step": start_step, "epoch": state["epoch"], "loss": float(np.mean(losses)),
                "lr": float(engine.get_lr()[0]), "samples_per_s": seen * world / dt,
                "tokens_per_s": toks * world / dt, "peak_rss_mb": _peak_memory_mb(device),
            }
            if do_eval:
                metrics |= validate(engine, collator, valid_rows, cfg, rank, world, device, item_prior)
                value = metrics[f"valid_{tc.early_stopping_metric}"]
                if value > state["best"]:
                    state["best"], state["bad_evals"] = value, 0
                else:
                    state["bad_evals"] += 1
                stop = state["bad_evals"] >= tc.early_stopping_patience
                metrics["best_" + tc.early_stopping_metric] = state["best"]
            if rank == 0:
                progress("step", step, total_steps, **{k: v for k, v in metrics.items() if k != "step"})
            if do_ckpt or stop:
                # Ray keeps the keep_checkpoints best by this; one not validated ranks last.
                metrics[CHECKPOINT_SCORE] = value if do_eval else -math.inf
                with reported_checkpoint(metrics, checkpoint_dir_name(step), sharded=True) as tmp:
                    write_checkpoint(tmp, engine, collator, cfg, dict(state), rank)
            else:
                ray.train.report(metrics)
            t0, seen, toks, losses = time.perf_counter(), 0, 0, []
            if done or stop:
                break
        else:
            state["epoch"], state["batches_in_epoch"] = state["epoch"] + 1, 0
            continue
        break
    if stop and rank == 0:
        log.info("early stop at step %d: best %s=%.4f", state["step"],
                    tc.early_stopping_metric, state["best"])
