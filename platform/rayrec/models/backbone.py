"""Backbone resolution: config name -> local path or hub id, family detection, LoRA defaults."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoConfig

from rayrec.models.embedded import embedded_path

# Families whose weights are causal LMs (scored through the LM head) vs encoders (pooled + head).
CAUSAL_FAMILIES = ("gpt2", "llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3")
ENCODER_FAMILIES = ("bert", "roberta", "distilbert", "xlm-roberta", "deberta-v2", "electra")

# Per-family LoRA target modules (attention projections; more modules = more capacity).
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
    "xlm-roberta": ["query", "key", "value"],
    "electra": ["query", "key", "value"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj"],
    "gpt2": ["c_attn"],
}
_PROJ_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def resolve_backbone(name: str) -> str:
    """Map a config backbone name to something ``from_pretrained`` accepts.

    ``"minilm"`` (all-MiniLM-L6-v2) and ``"smollm2-135m"`` (SmolLM2-135M-Instruct) are embedded
    models (:mod:`rayrec.models.embedded`); anything else is a local path or hub id.
    """
    local = embedded_path(name)
    if local is not None:
        return local
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded):
        return str(Path(expanded).resolve())
    return name


def backbone_family(path_or_id: str) -> str:
    """The transformers ``model_type`` of a resolved backbone (e.g. 'bert', 'gpt2', 'llama')."""
    return AutoConfig.from_pretrained(path_or_id).model_type


def is_causal_family(family: str) -> bool:
    """Whether a model_type is scored as a causal LM (else as an encoder cross-encoder)."""
    if family in CAUSAL_FAMILIES:
        return True
    if family in ENCODER_FAMILIES:
        return False
    raise ValueError(
        f"unsupported backbone family {family!r}: known encoders {ENCODER_FAMILIES}, "
        f"causal LMs {CAUSAL_FAMILIES}"
    )


def default_lora_targets(family: str) -> list[str]:
    """LoRA target modules for a family when the config leaves them unset."""
    return list(DEFAULT_LORA_TARGETS.get(family, _PROJ_TARGETS))
