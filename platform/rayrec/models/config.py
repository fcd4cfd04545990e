"""Config section for the ranker: backbone, head, loss and LoRA."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from rayrec.configbase import Section
from rayrec.models.kinds import KINDS


def _registered_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown ranker kind {kind!r}; registered (rayrec.models.kinds): {', '.join(sorted(KINDS))}")
    return kind


RankerKind = Annotated[str, AfterValidator(_registered_kind)]  # a name in rayrec.models.kinds.KINDS
LossKind = Literal["bce", "mse", "listwise"]


class LoraSettings(Section):
    """peft LoRA settings; target_modules None picks the backbone family's default."""

    enabled: bool = Field(True, description="Fine-tune with LoRA adapters; False: train the full backbone.")
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA scaling alpha (updates are scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: list[str] | None = Field(
        None, description="Module names LoRA adapts; None: the backbone family's default."
    )


class ModelConfig(Section):
    """The ranker. backbone: 'minilm' (embedded all-MiniLM-L6-v2), a hub id, or a local path."""

    backbone: str = Field(
        "minilm",
        description="Ranker backbone: 'minilm' (embedded all-MiniLM-L6-v2), a hub id or a local path.",
    )
    kind: RankerKind = Field(
        "cross_encoder",
        description="Ranker architecture: an encoder with a score head, or a causal LM answering yes/no or "
        "ordering a list.",
    )
    loss: LossKind = Field(
        "bce",
        description="Training loss: binary cross-entropy, mean squared error or listwise softmax.",
    )
    max_length: int = Field(
        96, ge=8,
        description="Tokens per scored sequence; the history is cut oldest-first.",
    )
    max_candidate_tokens: int = Field(24, ge=4, description="Tokens per candidate text.")
    max_history_items: int = Field(10, ge=1, description="Newest history items in each scored sequence.")
    pooling: Literal["mean", "cls"] = Field(
        "mean",
        description="cross_encoder: how the head reads the encoder's outputs.",
    )
    listwise_window: int = Field(20, ge=2, le=26, description="causal_listwise: candidates per prompt.")
    score_batch_size: int = Field(64, ge=1, description="Sequences per forward pass when scoring.")
    # int8: LoRA merged into the weights and every backbone Linear quantised to int8 (dynamic:
    # weights int8 once, activations per batch), ~2x faster scoring on CPU.
    precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto",
        description="Scoring precision (inference only; training is fp32): auto = the fastest path "
        "within 0.002 NDCG@10 of fp32 (bf16 on GPU; on CPU int8 for the embedded backbones, else fp32); "
        "int8 = quantised, CPU only.",
    )
    lora: LoraSettings = Field(
        default_factory=LoraSettings,
        description="LoRA settings of the ranker's fine-tuning.",
    )
    # Off by default: LoRA has its own, and on CPU the backbone's makes every step ~30% slower for
    # no measured gain in a short run.
    backbone_dropout: bool = Field(False, description="Keep the backbone's own dropout on while fine-tuning.")
    popularity_prior: bool = Field(
        True,
        description="Add a learned weight x the item's popularity prior (rayrec.models.prior) to every score.",
    )
    # The ranker then learns what text adds on top of the collaborative signal. Its weight starts
    # at 0: without mined examples (train.examples) it stays unused.
    retrieval_prior: bool = Field(
        True,
        description="Add a learned weight x the sequential retriever's score (its log-lift) to every score.",
    )
