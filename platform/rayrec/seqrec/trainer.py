"""``run_retriever_training``: sequences with Ray Data, the worker loop with Ray Train (DDP).

The best checkpoint by the validation metric (Ray keeps it: ``checkpoint_score_attribute``)
becomes the servable artifact ``<retriever_dir>/model``, and its item vectors the FAISS index
``<retriever_dir>/index`` that evaluation and the retrieval deployment search.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from ray.train import ScalingConfig

from rayrec.config import RayrecConfig
from rayrec.data.store import load_items
from rayrec.raytrain.checkpoint import publish_checkpoint
from rayrec.raytrain.driver import fit, require_best
from rayrec.retrieval.index import ItemIndex, embed_items_ray
from rayrec.runtime import init_ray, require_resources, warn_if_busy
from rayrec.seqrec.data import sequence_dataset
from rayrec.seqrec.loop import train_loop_per_worker
from rayrec.seqrec.mining import mine_ranker_examples
from rayrec.seqrec.model import META_FILE, MODEL_FILE
from rayrec.seqrec.scorer import build_retriever_index
from rayrec.tracking import start_run
from rayrec.tracking.train import report_callbacks

log = logging.getLogger(__name__)


def _text_vectors(cfg: RayrecConfig, n_items: int) -> np.ndarray:
    """Item text embeddings (row i = item i): the text index's when built, else encoded now."""
    try:
        index = ItemIndex.load(cfg.index_dir)
        if len(index) == n_items:
            return index.embeddings_for(range(n_items))
    except FileNotFoundError:
        pass
    items = load_items(cfg.data_dir)
    return embed_items_ray(items, cfg.retrieval.encoder or cfg.model.backbone,
                           batch_size=cfg.retrieval.embed_batch_size)


# Settings that do not shape the model (how long it trains, where, on what hardware, what is
# mined after): a run that differs only in them resumes (e.g. more epochs continue a run).
NOT_SHAPING = {"enabled", "num_workers", "use_gpu", "torch_threads", "keep_checkpoints", "max_failures",
               "mine_positions", "mine_candidates", "run_name", "out", "max_epochs", "max_minutes",
               "patience", "eval_every_epochs", "early_stopping_metric"}


def run_name(rc, n_items: int, n_windows: int) -> str:
    """``<retriever.run_name>-<fingerprint>``: Ray Train resumes a run of the same name, so the
    name carries a hash of every setting that shapes the model and of the data's size. The same
    configuration resumes; a changed one (a seed, a tuning trial, text_init) is a run of its own."""
    shaping = rc.model_dump(mode="json", exclude=NOT_SHAPING) | {"n_items": n_items, "n_windows": n_windows}
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:10]
    return f"{rc.run_name}-{digest}"


def run_retriever_training(cfg: RayrecConfig, serving_artifacts: bool = True) -> dict[str, Any]:
    """Train the retriever on ``<data_dir>/interactions``; publish the best model, and with
    ``serving_artifacts`` its FAISS index and the ranker's mined lists (a tuning trial needs
    neither: only its validation figure)."""
    init_ray(cfg.ray)
    rc = cfg.retriever
    items = load_items(cfg.data_dir)
    n_items = len(items)
    per_worker = {"CPU": 1.0, **({"GPU": 1.0} if rc.use_gpu else {})}
    needs = {k: v * rc.num_workers for k, v in per_worker.items()}
    require_resources(needs, f"retriever training ({rc.num_workers} workers, use_gpu={rc.use_gpu})")
    seqs = sequence_dataset(cfg.data_dir, rc.max_len, rc.stride).materialize()  # before workers hold CPUs
    n_windows = seqs.count()
    if n_windows < rc.num_workers:
        raise ValueError(f"{n_windows} sequences with 2+ train items cannot feed {rc.num_workers} workers")
    # one int per window through the driver: a third of Dataset.unique's time (an aggregation
    # job of its own, ~5 s on 2 cores however small the data)
    user_col = seqs.select_columns(["user_idx"]).iter_batches(batch_format="numpy", batch_size=None)
    n_users = int(np.unique(np.concatenate([b["user_idx"] for b in user_col])).size)
    text = _text_vectors(cfg, n_items) if rc.text_init else None
    # items with a training positive; the others (new) are read from their text alone
    trained = (items["popularity"].to_numpy() > 0) if rc.text_init else None
    warn_if_busy(needs, "retriever training")
    log.info("training the retriever on %d users (%d windows) x %d items, %d worker(s)", n_users,
             n_windows, n_items, rc.num_workers)
    metric = f"valid_{rc.early_stopping_metric}"
    params = {"retriever": rc.model_dump(mode="json"), "users": n_users, "windows": n_windows,
              "items": n_items}
    with start_run(cfg, "train-retriever", params) as run:
        result = fit(
            train_loop_per_worker,
            {"retriever": rc.model_dump(mode="json"), "n_items": n_items, "text_vectors": text, "trained": trained},
            name=run_name(rc, n_items, n_windows), storage_path=cfg.retriever_dir + "/runs",
            scaling=ScalingConfig(num_workers=rc.num_workers, use_gpu=rc.use_gpu),
            max_failures=rc.max_failures, keep_checkpoints=rc.keep_checkpoints, score_attribute=metric,
            callbacks=report_callbacks(run, "epoch"),  # rank 0's metrics per epoch -> MLflow
            datasets={"train": seqs},
        )
        value, best, best_metrics = require_best(result, metric, "retriever training")
        model_dir = publish_checkpoint(best, cfg.retriever_model_dir)
        index_dir = build_retriever_index(cfg) if serving_artifacts else None
        mined = mine_ranker_examples(cfg) if serving_artifacts else None
        run.log_model(model_dir, [META_FILE] + ([MODEL_FILE] if cfg.tracking.log_model else []))
        return {"model": model_dir, "index": index_dir, "mined": mined, "best_epoch": best_metrics.get("epoch"),
                metric: value, "users": n_users, "windows": n_windows, "items": n_items,
                "sequences_per_s": best_metrics.get("sequences_per_s"),
                "last": dict(result.metrics or {}), "run_dir": str(result.path),
                "checkpoint": str(Path(best.path))}
