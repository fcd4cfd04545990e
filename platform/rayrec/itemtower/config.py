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
    enabled: bool = Field(
        True,
        description="Tune the item tower in `rayrec main` after a text-grounded retriever.",
    )
    backbone: str = Field(
        "minilm",
        description="The text encoder tuned: the one the retriever's text part reads (retrieval.encoder).",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings of the tuning.")
    max_length: int = Field(
        48, ge=8,
        description="Tokens per item text (titles, year and genres take about 20).",
    )
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    batch_size: int = Field(
        64, ge=2, description="Items per worker per step (each with one user who clicked it)."
    )
    warmup_ratio: float = Field(
        0.05, ge=0, le=1,
        description="Share of max_steps spent warming up the learning rate.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clipping threshold.")
    distill_weight: float = Field(
        1.0, ge=0, description="Weight of the score-distillation loss term (itemtower.loop); 0: off."
    )
    max_steps: int = Field(150, ge=1, description="Optimizer steps to train.")
    eval_every_steps: int = Field(
        50, ge=1,
        description="Optimizer steps between validations and checkpoints.",
    )
    # Warm items held out of the tower's training to validate it: text-only vectors of items it
    # never saw, ranked against the whole warm catalog by users who clicked them.
    valid_fraction: float = Field(
        0.1, gt=0, lt=1,
        description="Share of warm items held out of training to validate the tower.",
    )
    max_valid_pairs: int = Field(
        2000, ge=10,
        description="Cap on (user, held-out item) pairs per validation.",
    )
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept: the best by validation.")
    run_name: str = Field(
        "tower",
        description="Name prefix of the Ray Train run (its directory under <out>/runs).",
    )
    seed: int = Field(0, description="Random seed of the validation split and training.")
    out: str | None = Field(None, description="Where the tuned tower is written; None: <run_dir>/tower.")
