"""Settings every Ray Train + DeepSpeed job reads: workers, ZeRO, precision, optimisation.

The ranker's ``train`` section extends :class:`DeepSpeedTraining` (so its YAML paths are these
fields'); the item tower and the generator run on that section's workers with their own
optimisation (:func:`with_optimisation`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.configbase import Section

# What another job's section may set over the workers' section (same names, same meaning).
OPTIMISATION = {"batch_size", "grad_accum_steps", "lr", "weight_decay", "warmup_ratio", "max_grad_norm"}


class DeepSpeedSettings(Section):
    """DeepSpeed ZeRO stage and offload."""

    zero_stage: Literal[0, 1, 2, 3] = Field(
        2,
        description="DeepSpeed ZeRO stage: 0 none, 1 optimizer states, 2 + gradients, 3 + parameters sharded.",
    )
    offload_optimizer: bool = Field(False, description="Offload optimizer states to CPU memory.")
    offload_params: bool = Field(False, description="Offload parameters to CPU memory (ZeRO stage 3).")


class DeepSpeedTraining(Section):
    """Workers (count, devices, threads, placement), ZeRO, precision and optimisation."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel).")
    use_gpu: bool = Field(False, description="Give each worker a GPU.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict,
        description="Ray resources per worker, merged over the default 1 CPU (+ 1 GPU with use_gpu), e.g. "
        "{CPU: 4}.",
    )
    # 0 suits one CPU worker on a laptop.
    torch_threads: int | None = Field(
        None,
        ge=0,
        description="torch intra-op threads per worker: None = the CPUs the worker reserves (Ray's default, "
        "1 for a CPU worker); 0 = every core of its node.",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy of the workers across nodes.",
    )
    deepspeed: DeepSpeedSettings = Field(
        default_factory=DeepSpeedSettings,
        description="DeepSpeed ZeRO stage and offload.",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Training precision; auto: bf16 on GPU, fp32 on CPU.",
    )
    batch_size: int = Field(16, ge=1, description="Examples per worker, per micro-step.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-steps accumulated per optimizer step.")
    # LoRA (and a fresh head) tolerate and need a high rate.
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        0.05, ge=0, le=1,
        description="Share of the steps spent warming up the learning rate.",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clipping threshold.")


def with_optimisation(workers: DeepSpeedTraining, section: Section, **overrides) -> DeepSpeedTraining:
    """``workers``' scaling, ZeRO and precision with ``section``'s optimisation (its fields
    named in :data:`OPTIMISATION`), then ``overrides``: what :func:`build_ds_config` reads."""
    shared = workers.model_dump(include=set(DeepSpeedTraining.model_fields))
    return DeepSpeedTraining.model_validate(shared | section.model_dump(include=OPTIMISATION) | overrides)
