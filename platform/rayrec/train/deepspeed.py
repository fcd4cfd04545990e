"""The DeepSpeed config dict, built from TrainConfig (ZeRO stage, offload, precision, schedule)."""

from __future__ import annotations

from typing import Any

from rayrec.train.config import TrainConfig


def use_bf16(cfg: TrainConfig) -> bool:
    """bf16 on GPU unless fp32 is asked for; fp32 on CPU unless bf16 is asked for."""
    return cfg.precision == "bf16" or (cfg.precision == "auto" and cfg.use_gpu)


def build_ds_config(cfg: TrainConfig, total_steps: int, world_size: int) -> dict[str, Any]:
    """DeepSpeed config: AdamW + linear warmup/decay over ``total_steps`` optimizer steps."""
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        if ds.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if ds.offload_params:
        if ds.zero_stage != 3:
            raise ValueError("deepspeed.offload_params needs zero_stage 3")
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if ds.zero_stage == 3:
        # LoRA models are small: keep tiny params resident, gather the rest per module.
        zero["stage3_param_persistence_threshold"] = 1e4
    warmup = int(round(cfg.warmup_ratio * total_steps))
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.batch_size * cfg.grad_accum_steps * world_size,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(cfg)},
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW unless offloading (then DeepSpeed's CPU Adam is required).
            "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
                       "torch_adam": not ds.offload_optimizer},
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": 0.0, "warmup_max_lr": cfg.lr, "warmup_num_steps": max(warmup, 1),
                "total_num_steps": max(total_steps, warmup + 1), "warmup_type": "linear",
            },
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
