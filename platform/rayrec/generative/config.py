"""Config section for LoRA-tuning the generator (``generator``, `rayrec train-generator`)."""

from __future__ import annotations

from pydantic import Field, field_validator

from rayrec.configbase import Section
from rayrec.models.config import LoraSettings


class GeneratorConfig(Section):
    """What the generator learns from and how long: each user's train sequence, read as
    (newest ``history_items`` titles -> the next item's title), causal-LM loss on the title.

    Workers, GPUs, placement, torch threads, DeepSpeed ZeRO stage / offload, precision and
    failures are the ``train`` section's: one cluster, one way to scale jobs on it
    (``--set train.num_workers=1`` for this command alone).
    """

    backbone: str = Field(
        "smollm2-135m",
        description="The causal LM tuned: embedded name, hub id or local path.",
    )
    # target_modules None: the family's attention projections (q/k/v/o_proj for Llama/SmolLM2)
    lora: LoraSettings = Field(
        default_factory=LoraSettings,
        description="LoRA settings of the tuning (must be enabled).",
    )
    # Evaluate with the same evaluate.generative.history_items (fewer titles = shorter prompts =
    # faster steps on CPU).
    history_items: int = Field(10, ge=1, description="Newest history titles in each prompt.")
    positions_per_user: int = Field(
        20, ge=1,
        description="Newest transitions of each train sequence used as examples.",
    )
    max_examples: int | None = Field(
        20_000, ge=1, description="Cap on training examples (a seeded sample when there are more); None: all."
    )
    max_valid_users: int = Field(
        64, ge=1,
        description="Users whose held-out valid item gives the validation loss.",
    )
    lr: float = Field(5e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(8, ge=1, description="Examples per worker per micro-step.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-steps accumulated per optimizer step.")
    warmup_ratio: float = Field(
        0.05, ge=0, le=1,
        description="Share of max_steps spent warming up the learning rate.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clipping threshold.")
    max_steps: int = Field(
        300, ge=1, description="Optimizer steps to train (epochs over the examples repeat as needed)."
    )
    eval_every_steps: int = Field(
        50, ge=1, description="Optimizer steps between validation losses and checkpoints (also at the end)."
    )
    log_every_steps: int = Field(10, ge=1, description="Optimizer steps between logged training losses.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept: the best by validation loss.")
    run_name: str = Field(
        "generator",
        description="Name of the Ray Train run (its directory under <out>/runs).",
    )
    seed: int = Field(0, description="Random seed of example sampling and training.")
    out: str | None = Field(
        None,
        description="Where the generator is written (adapter/: the best by validation loss); None: "
        "<run_dir>/generator.",
    )

    @field_validator("lora")
    @classmethod
    def _lora_only(cls, lora: LoraSettings) -> LoraSettings:
        if not lora.enabled:
            raise ValueError("the generator is tuned with LoRA only (enabled must be true)")
        return lora
