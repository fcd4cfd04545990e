"""DeepSpeed for the workers: its config dict (ZeRO stage, offload, precision, schedule) built
from :class:`~rayrec.raytrain.config.DeepSpeedTraining`, and the engine over a model."""

from __future__ import annotations

from typing import Any

from rayrec.raytrain.config import DeepSpeedTraining


def use_bf16(cfg: DeepSpeedTraining) -> bool:
    """bf16 on GPU unless fp32 is asked for; fp32 on CPU unless bf16 is asked for."""
    return cfg.precision == "bf16" or (cfg.precision == "auto" and cfg.use_gpu)


def _zero(cfg: DeepSpeedTraining) -> dict[str, Any]:
    """The ``zero_optimization`` block: the stage and what is offloaded to CPU memory."""
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
    return zero


def build_ds_config(cfg: DeepSpeedTraining, total_steps: int, world_size: int) -> dict[str, Any]:
    """DeepSpeed config: AdamW + linear warmup/decay over ``total_steps`` optimizer steps."""
    warmup = int(round(cfg.warmup_ratio * total_steps))
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.batch_size * cfg.grad_accum_steps * world_size,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": _zero(cfg),
        "bf16": {"enabled": use_bf16(cfg)},
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW unless offloading (then DeepSpeed's CPU Adam is required).
            "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
                       "torch_adam": not cfg.deepspeed.offload_optimizer},
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


def ds_engine(model, cfg: DeepSpeedTraining, total_steps: int, world_size: int):
    """A DeepSpeed engine training ``model``'s trainable parameters (in the process group Ray
    Train has set up) with :func:`build_ds_config`'s optimizer and schedule."""
    import deepspeed  # heavy (probes CUDA, builds ops): only the workers need it, not the driver

    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=build_ds_config(cfg, total_steps, world_size), dist_init_required=False,
    )
    return engine
