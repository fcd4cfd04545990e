"""``run_generator_training`` (`rayrec train-generator`): tuning examples built in the driver,
the worker loop (:mod:`rayrec.generative.loop`) run by Ray Train on shards of them.

The best checkpoint by validation loss becomes ``<generator_dir>/adapter``, what
``evaluate.generative.adapter: tuned`` evaluates on the full catalog beside the other systems.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rayrec import storage
from rayrec.config import RayrecConfig
from rayrec.generative.adapter import META_FILE, PEFT_CONFIG
from rayrec.runtime import init_ray, warn_if_busy
from rayrec.tracking import start_run
from rayrec.tracking.train import report_callbacks

log = logging.getLogger(__name__)


def run_generator_training(cfg: RayrecConfig) -> dict[str, Any]:
    """LoRA-tune ``generator.backbone`` to write each user's next title; publish the best adapter."""
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from transformers import AutoTokenizer

    from rayrec.generative.examples import build_examples
    from rayrec.generative.loop import VALID_METRIC, train_loop_per_worker
    from rayrec.models.backbone import resolve_backbone
    from rayrec.train.checkpoint import publish_checkpoint
    from rayrec.train.trainer import require_schedulable, worker_resources

    init_ray(cfg.ray)
    gc, tc = cfg.generator, cfg.train
    require_schedulable(cfg)  # the workers, and a CPU for the Ray Data shards feeding them
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(gc.backbone))
    train_rows, valid_rows = build_examples(cfg.data_dir, gc, tokenizer)
    if len(train_rows) < gc.batch_size * tc.num_workers:
        raise ValueError(f"{len(train_rows)} tuning examples cannot fill one step of generator.batch_size="
                         f"{gc.batch_size} x train.num_workers={tc.num_workers}")
    warn_if_busy({k: v * tc.num_workers for k, v in worker_resources(cfg).items()}, "generator tuning")
    log.info("tuning %s for %d steps on %d worker(s): %d examples, %d validation users", gc.backbone,
             gc.max_steps, tc.num_workers, len(train_rows), len(valid_rows))
    params = {"generator": gc.model_dump(mode="json"), "examples": len(train_rows),
              "valid_users": len(valid_rows), "num_workers": tc.num_workers, "use_gpu": tc.use_gpu}
    with start_run(cfg, "train-generator", params) as run:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": cfg.model_dump(mode="json")},
            scaling_config=ScalingConfig(
                num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                resources_per_worker=tc.resources_per_worker or None, placement_strategy=tc.placement_strategy,
            ),
            torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
            run_config=RunConfig(
                name=gc.run_name, storage_path=storage.join(cfg.generator_dir, "runs"),
                failure_config=FailureConfig(max_failures=tc.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=gc.keep_checkpoints, checkpoint_score_order="min",
                                                   checkpoint_score_attribute=VALID_METRIC),
                callbacks=report_callbacks(run, "step"),  # rank 0's metrics per step -> MLflow
            ),
            datasets={"train": ray.data.from_items(train_rows), "valid": ray.data.from_items(valid_rows)},
            dataset_config=DataConfig(datasets_to_split=["train"]),  # every worker validates on all
        )
        t0 = time.perf_counter()
        result = trainer.fit()
        if result.error:
            raise result.error
        fit_seconds = time.perf_counter() - t0
        scored = [(m[VALID_METRIC], c, m) for c, m in (result.best_checkpoints or []) if VALID_METRIC in m]
        if not scored:
            raise RuntimeError(f"generator tuning reported no {VALID_METRIC}; nothing to publish")
        value, best, best_metrics = min(scored, key=lambda t: t[0])
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
