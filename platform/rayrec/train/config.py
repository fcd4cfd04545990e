"""Config section of the ranker's fine-tuning (``train``): Ray Train + DeepSpeed.

The workers, ZeRO, precision and optimisation fields are the shared
:class:`~rayrec.raytrain.config.DeepSpeedTraining`'s (the item tower and the generator run on
them too); the rest is the ranker's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.raytrain.config import DeepSpeedTraining


class TrainConfig(DeepSpeedTraining):
    """Scaling, optimisation, validation and checkpointing of the training job."""

    batch_size: int = Field(  # the ranker's examples: the shared field, its own description
        16, ge=1, description="Examples (each 1 positive + negatives) per worker, per micro-step."
    )
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
