"""``run_generator_training`` (`rayrec train-generator`): tuning examples built in the driver,
the worker loop (:mod:`rayrec.generative.loop`) run by Ray Train on shards of them.

The best checkpoint by validation loss becomes ``<generator_dir>/adapter``, what
``evaluate.generative.adapter: tuned`` evaluates on the full catalog beside the other systems.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray.data
from transformers import AutoTokenizer

from rayrec import storage
from rayrec.config import RayrecConfig
from rayrec.generative.adapter import META_FILE, PEFT_CONFIG
from rayrec.generative.examples import build_examples
from rayrec.generative.loop import VALID_METRIC, train_loop_per_worker
from rayrec.models.backbone import resolve_backbone
from rayrec.raytrain.checkpoint import publish_checkpoint
from rayrec.raytrain.driver import (
    fit,
    require_best,
    require_schedulable,
    scaling_config,
    total_resources,
)
from rayrec.runtime import init_ray, warn_if_busy
from rayrec.tracking import start_run
from rayrec.tracking.train import report_callbacks

log = logging.getLogger(__name__)


def run_generator_training(cfg: RayrecConfig) -> dict[str, Any]:
    """LoRA-tune ``generator.backbone`` to write each user's next title; publish the best adapter."""
    init_ray(cfg.ray)
    gc, tc = cfg.generator, cfg.train
    require_schedulable(tc)  # the workers, and a CPU for the Ray Data shards feeding them
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(gc.backbone))
    train_rows, valid_rows = build_examples(cfg.data_dir, gc, tokenizer)
    if len(train_rows) < gc.batch_size * tc.num_workers:
        raise ValueError(f"{len(train_rows)} tuning examples cannot fill one step of generator.batch_size="
                         f"{gc.batch_size} x train.num_workers={tc.num_workers}")
    warn_if_busy(total_resources(tc), "generator tuning")
    log.info("tuning %s for %d steps on %d worker(s): %d examples, %d validation users", gc.backbone,
             gc.max_steps, tc.num_workers, len(train_rows), len(valid_rows))
    params = {"generator": gc.model_dump(mode="json"), "examples": len(train_rows),
              "valid_users": len(valid_rows), "num_workers": tc.num_workers, "use_gpu": tc.use_gpu}
    with start_run(cfg, "train-generator", params) as run:
        datasets = {"train": ray.data.from_items(train_rows), "valid": ray.data.from_items(valid_rows)}
        t0 = time.perf_counter()
        result = fit(
            train_loop_per_worker, {"cfg": cfg.model_dump(mode="json")},
            name=gc.run_name, storage_path=storage.join(cfg.generator_dir, "runs"), scaling=scaling_config(tc),
            max_failures=tc.max_failures, keep_checkpoints=gc.keep_checkpoints,
            score_attribute=VALID_METRIC, score_order="min",
            callbacks=report_callbacks(run, "step"),  # rank 0's metrics per step -> MLflow
            datasets=datasets, datasets_to_split=["train"],  # every worker validates on all
        )
        fit_seconds = time.perf_counter() - t0
        value, best, best_metrics = require_best(result, VALID_METRIC, "generator tuning", order="min")
        adapter = publish_checkpoint(best, cfg.generator_adapter_dir)
        run.log_model(adapter, [META_FILE, PEFT_CONFIG]
                      + (["adapter_model.safetensors"] if cfg.tracking.log_model else []))
    last = dict(result.metrics or {})
    return {"adapter": adapter, "best_step": best_metrics["step"], VALID_METRIC: value,
            "valid_exact": best_metrics["valid_exact"], "steps": last.get("step"),
            "examples": len(train_rows), "valid_users": len(valid_rows),
            "train_seconds": last.get("seconds"), "fit_seconds": fit_seconds,
            "examples_per_s": last.get("examples_per_s"), "tokens_per_s": last.get("tokens_per_s"),
            "last": last, "run_dir": str(result.path), "checkpoint": str(best.path)}
