"""Config section for the text-grounded item tower (``tower``, `rayrec train-tower`)."""

from __future__ import annotations

from pydantic import Field

from rayrec.configbase import Section
from rayrec.models.config import LoraSettings


class TowerConfig(Section):
    """LoRA-tune a text encoder so that an item's text lands where the retriever would have put
    the item had it been trained on its clicks (new items: text is all there is).

    Workers, GPUs, ZeRO stage and precision are the ``train`` section's (one way to scale jobs).
    """

    # `rayrec main` tunes the tower after a text-grounded retriever (retriever.text_init), so
    # that the endpoint serves items without interactions (and POST /items) from it.
    enabled: bool = True
    backbone: str = "minilm"  # the encoder the retriever's text part reads (retrieval.encoder)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    max_length: int = Field(48, ge=8)  # tokens per item text (titles, year, genres: ~20)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=2)  # items per worker per step (each with one user who clicked it)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    distill_weight: float = Field(1.0, ge=0)  # the score-distillation term (itemtower.loop)
    max_steps: int = Field(150, ge=1)
    eval_every_steps: int = Field(50, ge=1)
    # Warm items held out of the tower's training to validate it: text-only vectors of items it
    # never saw, ranked against the whole warm catalog by users who clicked them.
    valid_fraction: float = Field(0.1, gt=0, lt=1)
    max_valid_pairs: int = Field(2000, ge=10)
    keep_checkpoints: int = Field(2, ge=1)
    run_name: str = "tower"
    seed: int = 0
    out: str | None = None  # default: <run_dir>/tower
