"""Tiny randomly initialised backbones of each family, built offline for tests and benchmarks."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from rayrec.models import prompts
from rayrec.models.backbone import resolve_backbone

TINY_FAMILIES = ("bert", "gpt2", "llama", "qwen2")
_EOS = "<|endoftext|>"


def _bpe_tokenizer(vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on prompt words, so verbalizer/index tokens are single."""
    from tokenizers import (  # tiny test models only
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    words = " ".join(prompts.template_words()) + " " + " ".join(string.ascii_letters + string.digits)
    corpus = [words] * 50 + [" " + c for c in string.ascii_uppercase] * 20 + [" Yes", " No"] * 50
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    # Like GPT-2/Llama: eos (== bos) exists, no pad token; the ranker must cope.
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=_EOS, bos_token=_EOS)


def make_tiny_backbone(family: str, out_dir: str | Path, seed: int = 0) -> str:
    """Save a tiny random ``family`` model + tokenizer to ``out_dir``; return the path."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {TINY_FAMILIES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dims = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    if family == "bert":
        tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
        config = BertConfig(
            vocab_size=tokenizer.vocab_size, num_hidden_layers=2, max_position_embeddings=512, **dims
        )
        model = BertModel(config)
    else:
        tokenizer = _bpe_tokenizer()
        eos = tokenizer.eos_token_id
        common = dict(vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos)
        if family == "gpt2":
            config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=512, **common)
            model = GPT2LMHeadModel(config)
        else:
            cls_cfg, cls_model = (
                (LlamaConfig, LlamaForCausalLM) if family == "llama" else (Qwen2Config, Qwen2ForCausalLM)
            )
            config = cls_cfg(
                num_hidden_layers=2, num_key_value_heads=1, max_position_embeddings=512,
                tie_word_embeddings=False, **dims, **common,
            )
            model = cls_model(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
