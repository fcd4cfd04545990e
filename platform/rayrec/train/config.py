"""Config section for Ray Train + DeepSpeed fine-tuning."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.configbase import Section


class DeepSpeedSettings(Section):
    """DeepSpeed ZeRO stage and offload."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False


class TrainConfig(Section):
    """Scaling, optimisation, validation and checkpointing of the training job."""

    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    # torch intra-op threads per worker: None = the CPUs the worker reserves (Ray's default,
    # 1 for a CPU worker), 0 = every core of its node (one CPU worker on a laptop).
    torch_threads: int | None = Field(None, ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    batch_size: int = Field(16, ge=1)  # examples (each 1 positive + negatives) per worker, per step
    grad_accum_steps: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)  # LoRA + a fresh head tolerate (and need) a high rate
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(200, ge=1)  # ~8 min for MiniLM on 2 CPU cores
    max_train_examples: int | None = Field(None, ge=1)
    # sampled: preprocessing's examples (uniform negatives); retriever: the positive among the
    # retriever's own top-N (hard negatives) with its scores, mined by `rayrec train-retriever`;
    # auto: retriever when those exist, else sampled.
    examples: Literal["auto", "sampled", "retriever"] = "auto"
    eval_every_steps: int = Field(50, ge=1)
    early_stopping_metric: str = Field("ndcg@10", pattern=r"^((ndcg|hr)@[1-9]\d*|mrr)$")
    early_stopping_patience: int = Field(3, ge=1)
    checkpoint_every_steps: int = Field(50, ge=1)
    max_valid_examples: int | None = Field(100, ge=1)  # validation users per evaluation
    valid_candidates: int | None = Field(20, ge=2)  # candidates per validation list (positive first)
    log_every_steps: int = Field(10, ge=1)
    shuffle_buffer: int = Field(2000, ge=0)  # local shuffle buffer (rows) per worker
    storage_path: str | None = None  # default: <run_dir>/checkpoints
    run_name: str = "ranker"  # same storage_path + run_name = resume the same job
    keep_checkpoints: int | None = Field(3, ge=1)  # most recent kept; None keeps all
    max_failures: int = Field(2, ge=0)
    fail_at_step: int | None = Field(None, ge=1)  # chaos testing: rank 0 fails once at this step
    init_from: str | None = None  # a saved ranker to continue fine-tuning from (feedback loop)
    seed: int = 0
