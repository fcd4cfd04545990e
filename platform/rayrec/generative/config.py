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

    backbone: str = "smollm2-135m"  # a causal LM: embedded name, hub id or local path
    # target_modules None: the family's attention projections (q/k/v/o_proj for Llama/SmolLM2)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    # Newest titles in each prompt: evaluate with the same evaluate.generative.history_items
    # (fewer titles = shorter prompts = faster steps on CPU).
    history_items: int = Field(10, ge=1)
    positions_per_user: int = Field(20, ge=1)  # newest transitions of each train sequence
    max_examples: int | None = Field(20_000, ge=1)  # a seeded sample when there are more
    max_valid_users: int = Field(64, ge=1)  # validation loss: these users' held-out valid item
    lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(8, ge=1)  # examples per worker per micro-step
    grad_accum_steps: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_steps: int = Field(300, ge=1)  # optimizer steps (epochs over the examples repeat as needed)
    eval_every_steps: int = Field(50, ge=1)  # validation loss + a checkpoint (and at the end)
    log_every_steps: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1)  # the best by validation loss are kept
    run_name: str = "generator"
    seed: int = 0
    out: str | None = None  # default: <run_dir>/generator (adapter/: the best by validation loss)

    @field_validator("lora")
    @classmethod
    def _lora_only(cls, lora: LoraSettings) -> LoraSettings:
        if not lora.enabled:
            raise ValueError("the generator is tuned with LoRA only (enabled must be true)")
        return lora
