"""Config section for Ray Train + DeepSpeed fine-tuning."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.configbase import Section


class DeepSpeedSettings(Section):
    """DeepSpeed ZeRO stage and offload."""

    zero_stage: Literal[0, 1, 2, 3] = Field(
        2,
        description="DeepSpeed ZeRO stage: 0 none, 1 optimizer states, 2 + gradients, 3 + parameters sharded.",
    )
    offload_optimizer: bool = Field(False, description="Offload optimizer states to CPU memory.")
    offload_params: bool = Field(False, description="Offload parameters to CPU memory (ZeRO stage 3).")


class TrainConfig(Section):
    """Scaling, optimisation, validation and checkpointing of the training job."""

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
    batch_size: int = Field(
        16, ge=1, description="Examples (each 1 positive + negatives) per worker, per micro-step."
    )
    grad_accum_steps: int = Field(1, ge=1, description="Micro-steps accumulated per optimizer step.")
    # LoRA + a fresh head tolerate (and need) a high rate.
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        0.05, ge=0, le=1,
        description="Share of the steps spent warming up the learning rate.",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clipping threshold.")
    epochs: int = Field(
        1, ge=1,
        description="Passes over the training examples (unless max_steps comes first).",
    )
    # ~8 min for MiniLM on 2 CPU cores.
    max_steps: int | None = Field(
        200, ge=1,
        description="Most optimizer steps to train; None: as many as the epochs take.",
    )
    max_train_examples: int | None = Field(
        None, ge=1,
        description="Cap on the training examples read; None: all.",
    )
    examples: Literal["auto", "sampled", "retriever"] = Field(
        "auto",
        description="Training examples: sampled = preprocessing's (uniform negatives); retriever = mined "
        "by `rayrec train-retriever` (its top-N as hard negatives); auto = retriever when those exist, "
        "else sampled.",
    )
    eval_every_steps: int = Field(50, ge=1, description="Optimizer steps between validations.")
    early_stopping_metric: str = Field(
        "ndcg@10", pattern=r"^((ndcg|hr)@[1-9]\d*|mrr)$",
        description="Validation metric for the best checkpoint and early stopping (ndcg@K, hr@K or mrr).",
    )
    early_stopping_patience: int = Field(
        3, ge=1,
        description="Validations without improvement before stopping.",
    )
    checkpoint_every_steps: int = Field(50, ge=1, description="Optimizer steps between checkpoints.")
    max_valid_examples: int | None = Field(
        100, ge=1,
        description="Validation users per validation; None: all.",
    )
    valid_candidates: int | None = Field(
        20, ge=2,
        description="Candidates per validation list (positive first); None: every candidate of the example.",
    )
    log_every_steps: int = Field(10, ge=1, description="Optimizer steps between logged training losses.")
    shuffle_buffer: int = Field(
        2000, ge=0,
        description="Local shuffle buffer per worker, in rows (0: no local shuffle).",
    )
    storage_path: str | None = Field(
        None,
        description="Where checkpoints are written; None: <run_dir>/checkpoints.",
    )
    run_name: str = Field(
        "ranker",
        description="Name of the training run; the same storage_path + run_name resumes the same job.",
    )
    keep_checkpoints: int | None = Field(3, ge=1, description="Most recent checkpoints kept; None: keep all.")
    max_failures: int = Field(
        2, ge=0,
        description="Worker failures Ray Train recovers from (from the last checkpoint).",
    )
    fail_at_step: int | None = Field(
        None, ge=1, description="Chaos testing: rank 0 fails once at this step; None: never."
    )
    init_from: str | None = Field(
        None,
        description="A saved ranker to continue fine-tuning from (the feedback loop); None: start from the "
        "backbone.",
    )
    seed: int = Field(0, description="Random seed of training (initialisation and shuffling).")
