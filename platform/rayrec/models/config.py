"""Config section for the ranker: backbone, head, loss and LoRA."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.configbase import Section

RankerKind = Literal["cross_encoder", "causal_yesno", "causal_listwise"]
LossKind = Literal["bce", "mse", "listwise"]


class LoraSettings(Section):
    """peft LoRA settings; target_modules None picks the backbone family's default."""

    enabled: bool = True
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None


class ModelConfig(Section):
    """The ranker. backbone: 'minilm' (embedded all-MiniLM-L6-v2), a hub id, or a local path."""

    backbone: str = "minilm"
    kind: RankerKind = "cross_encoder"
    loss: LossKind = "bce"
    max_length: int = Field(96, ge=8)  # tokens per scored sequence; history is cut oldest-first
    max_candidate_tokens: int = Field(24, ge=4)  # per candidate text
    max_history_items: int = Field(10, ge=1)
    pooling: Literal["mean", "cls"] = "mean"  # cross_encoder: how the head reads the encoder
    listwise_window: int = Field(20, ge=2, le=26)  # causal_listwise: candidates per prompt
    score_batch_size: int = Field(64, ge=1)  # sequences per forward pass in Ranker.score
    # Scoring precision (inference only; training is fp32): "auto" = bf16 on GPU, fp32 on CPU;
    # "int8" = on CPU, LoRA merged into the weights and every backbone Linear quantised to int8
    # (dynamic: weights int8 once, activations per batch), ~2x faster scoring on CPU.
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    # The backbone's own dropout while fine-tuning. Off by default: LoRA has its own, and on
    # CPU the backbone's makes every step ~30% slower for no measured gain in a short run.
    backbone_dropout: bool = False
    # Add a learned weight x the item's popularity prior (rayrec.models.prior) to every score.
    popularity_prior: bool = True
    # Add a learned weight x the sequential retriever's score (its log-lift, rayrec.seqrec) to
    # every score: the ranker then learns what text adds on top of the collaborative signal.
    # Its weight starts at 0: without mined examples (train.examples) it stays unused.
    retrieval_prior: bool = True
