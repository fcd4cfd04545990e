"""``run_training``: read the examples with Ray Data, run the worker loop with Ray Train."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from rayrec.checkpoints import MANIFEST_FILE, record_best
from rayrec.config import RayrecConfig
from rayrec.data import store
from rayrec.data.schema import EXAMPLES_DIR
from rayrec.models.prior import load_item_prior
from rayrec.raytrain import driver
from rayrec.raytrain.checkpoint import CONFIG_FILE, MODEL_DIR
from rayrec.raytrain.driver import (
    best_reported,
    checkpoint_uri,
    fit,
    scaling_config,
    total_resources,
)
from rayrec.raytrain.history import MetricsHistory, history_location, read_history
from rayrec.runtime import init_ray, warn_if_busy
from rayrec.storage import join, resolve_fs
from rayrec.tracking import start_run
from rayrec.tracking.train import report_callbacks
from rayrec.train.loop import (
    CHECKPOINT_SCORE,
    RETRIEVAL_COLUMN,
    TRAIN_COLUMNS,
    train_loop_per_worker,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where the final checkpoint is and the last reported metrics."""

    checkpoint: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""
    best_checkpoint: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # every report, oldest first


def examples_source(cfg: RayrecConfig) -> str:
    """``retriever`` (the positive among the retriever's top-N, :mod:`rayrec.seqrec.mining`) or
    ``sampled`` (preprocessing's uniform negatives); ``auto`` takes mined ones when present."""
    if cfg.train.examples != "auto":
        return cfg.train.examples
    fs, path = resolve_fs(join(cfg.retriever_dir, EXAMPLES_DIR, "train"))
    return "retriever" if fs.get_file_info(path).type == pafs.FileType.Directory else "sampled"


def examples_root(cfg: RayrecConfig) -> str:
    """Where the ranker's examples live for :func:`examples_source`."""
    return cfg.retriever_dir if examples_source(cfg) == "retriever" else cfg.data_dir


def _read_examples(cfg: RayrecConfig, split: str):
    root = examples_root(cfg)
    if "://" not in root and not os.path.isdir(os.path.join(root, EXAMPLES_DIR, split)):
        return None
    # Sampled examples carry no retriever scores: a retrieval prior then reads 0 (ranker_priors).
    columns = TRAIN_COLUMNS + ([RETRIEVAL_COLUMN] if examples_source(cfg) == "retriever" else [])
    return store.read_dataset(root, "examples", split).select_columns(columns)


def plan_steps(n_train: int, cfg: RayrecConfig) -> int:
    """Optimizer steps for the run: epochs over equal worker shards, capped by max_steps."""
    tc = cfg.train
    per_step = tc.batch_size * tc.grad_accum_steps * tc.num_workers
    steps_per_epoch = (n_train // (tc.batch_size * tc.num_workers)) // tc.grad_accum_steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"{n_train} training examples cannot fill one step of {per_step} "
            f"(batch_size x grad_accum_steps x num_workers); lower them or add data"
        )
    total = steps_per_epoch * tc.epochs
    return min(total, tc.max_steps) if tc.max_steps else total


def require_schedulable(cfg: RayrecConfig) -> None:
    """:func:`rayrec.raytrain.driver.require_schedulable` for the ranker's ``train`` workers."""
    driver.require_schedulable(cfg.train)


def run_training(cfg: RayrecConfig) -> TrainResult:
    """Fine-tune the ranker on ``<data_dir>/examples`` with Ray Train + DeepSpeed.

    Re-running with the same storage path and ``train.run_name`` resumes from the latest
    checkpoint (step count, optimizer and scheduler continue).
    """
    init_ray(cfg.ray)
    tc = cfg.train
    require_schedulable(cfg)
    train_ds = _read_examples(cfg, "train")
    if train_ds is None:
        raise FileNotFoundError(
            f"no training examples at {examples_root(cfg)}/{EXAMPLES_DIR}/train: run preprocessing "
            "first (train.examples: retriever also needs `rayrec train-retriever`)"
        )
    if tc.max_train_examples:
        train_ds = train_ds.limit(tc.max_train_examples)
    train_ds = train_ds.randomize_block_order(seed=tc.seed)
    total_steps = plan_steps(train_ds.count(), cfg)
    datasets = {"train": train_ds}
    valid_ds = _read_examples(cfg, "valid")
    if valid_ds is not None and tc.max_valid_examples:
        valid_ds = valid_ds.limit(tc.max_valid_examples)
    if valid_ds is not None:
        datasets["valid"] = valid_ds.materialize()
    item_prior = load_item_prior(cfg.data_dir) if cfg.model.popularity_prior else None
    log.info("training %s for %d steps on %d worker(s), %s examples", cfg.model.backbone,
             total_steps, tc.num_workers, examples_source(cfg))
    warn_if_busy(total_resources(tc), "training")
    params = {"train": tc.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json"),
              "examples": examples_source(cfg), "total_steps": total_steps}
    history = history_location(cfg.checkpoint_dir, tc.run_name)
    with start_run(cfg, "train-ranker", params) as run:
        result = fit(
            train_loop_per_worker,
            {"cfg": cfg.model_dump(mode="json"), "total_steps": total_steps,
             "has_valid": "valid" in datasets, "item_prior": item_prior, "examples": examples_source(cfg)},
            name=tc.run_name, storage_path=cfg.checkpoint_dir, scaling=scaling_config(tc),
            max_failures=tc.max_failures, keep_checkpoints=tc.keep_checkpoints,
            # Keep the best by validation (and Ray always keeps the latest, for resuming);
            # without a validation split, the newest.
            score_attribute=CHECKPOINT_SCORE if "valid" in datasets else None,
            callbacks=report_callbacks(run, "step")  # rank 0's metrics per step -> MLflow
            + [MetricsHistory(history)],  # and -> history.json (the report's training curve)
            datasets=datasets, datasets_to_split=["train"],
        )
        ckpt = checkpoint_uri(result.checkpoint, cfg.checkpoint_dir)
        best = None
        metric = f"valid_{tc.early_stopping_metric}"
        if (scored := best_reported(result, metric)) is not None:
            value, best_ckpt, _ = scored
            best = checkpoint_uri(best_ckpt, cfg.checkpoint_dir)
            record_best(cfg.checkpoint_dir, best, metric, float(value))
        if best or ckpt:  # its manifest and config (the servable model/ too: tracking.log_model)
            run.log_model(best or ckpt, [MANIFEST_FILE, CONFIG_FILE]
                          + ([MODEL_DIR] if cfg.tracking.log_model else []))
    return TrainResult(
        checkpoint=ckpt, metrics=dict(result.metrics or {}), run_dir=str(result.path),
        best_checkpoint=best, history=read_history(history),
    )

