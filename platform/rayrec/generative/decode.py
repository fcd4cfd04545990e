"""Beam search through the catalog trie: the K most likely titles a causal LM would write next.

Each step scores the live beams in one forward pass (the prompt's KV cache is computed once
and reordered as beams split), and only tokens the request's trie view allows are expanded,
so every finished beam spells a catalog item the user has not seen. A beam's score is its
title's log-probability, ``log p(title, end | prompt) = sum_t log p(y_t | prompt, y_<t)``.

Scores only fall as a beam grows, so once K items are finished no live beam scoring below
the K-th can ever enter the list: the search stops there (exact for what the beams hold), not
at the longest title. transformers' ``generate(prefix_allowed_tokens_fn=...)`` has neither
property: with few allowed tokens per step its beams run dry (-1e9 placeholders) and it runs
to ``max_new_tokens``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rayrec.generative.trie import CatalogTrie, TrieView


@dataclass(frozen=True)
class GeneratedList:
    """One prompt's generated items, best first, with their title log-probabilities."""

    items: np.ndarray
    scores: np.ndarray
    forward_passes: int  # decoding steps after the prompt (for per-token latency)


def generate_items(
    model, tokenizer, trie: CatalogTrie, prompts: Sequence[str], k: int,
    banned: Sequence[Iterable[int]] | None = None, num_beams: int | None = None,
) -> list[GeneratedList]:
    """Up to ``k`` distinct, not-banned catalog items per prompt (``num_beams`` >= k live beams)."""
    banned = banned if banned is not None else [()] * len(prompts)
    out = []
    for prompt, seen in zip(prompts, banned, strict=True):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
        out.append(beam_search(model, ids, trie.view(seen), k, max(k, num_beams or k)))
    return out


def _cache_arg(model) -> str:
    """The KV cache's name in a forward's arguments and output: ``cache`` in newer transformers
    5.x (5.24 here), ``past_key_values`` before (5.17 on the GPU image)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.inference_mode()
def beam_search(model, prompt_ids: torch.Tensor, view: TrieView, k: int, beams: int) -> GeneratedList:
    end, cache_arg = view.trie.end_id, _cache_arg(model)
    result = model(prompt_ids, use_cache=True)
    cache, logp = getattr(result, cache_arg), torch.log_softmax(result.logits[:, -1].float(), -1)
    live: list[tuple[tuple[int, ...], float]] = [((), 0.0)]  # (tokens so far, log-prob); row = cache row
    done: list[tuple[float, int]] = []  # (log-prob, item), best first, at most k
    steps = 0
    while live:
        candidates = []  # (log-prob, row, token) over every allowed continuation of every beam
        for row, (tokens, score) in enumerate(live):
            allowed = view.allowed(tokens)
            if allowed:
                scores = (score + logp[row, allowed]).tolist()
                candidates += zip(scores, [row] * len(allowed), allowed, strict=True)
        candidates.sort(key=lambda c: -c[0])
        bar = done[-1][0] if len(done) >= k else -np.inf  # the k-th finished score
        nxt: list[tuple[tuple[int, ...], float, int]] = []
        for score, row, token in candidates:
            if score <= bar:
                break  # sorted: nothing after this can enter the list
            tokens = (*live[row][0], token)
            if token == end:
                item = view.item(tokens)
                if item is not None and all(item != i for _, i in done):
                    done = sorted([*done, (score, item)], reverse=True)[:k]
                    bar = done[-1][0] if len(done) >= k else -np.inf
            elif len(nxt) < beams:
                nxt.append((tokens, score, row))
        nxt = [b for b in nxt if b[1] > bar]
        if not nxt:
            break
        cache.reorder_cache(torch.tensor([row for _, _, row in nxt], device=prompt_ids.device))
        result = model(torch.tensor([[tokens[-1]] for tokens, _, _ in nxt], device=prompt_ids.device),
                       **{cache_arg: cache}, use_cache=True)
        logp = torch.log_softmax(result.logits[:, -1].float(), -1)
        live = [(tokens, score) for tokens, score, _ in nxt]
        steps += 1
    return GeneratedList(np.asarray([i for _, i in done], dtype=np.int64),
                         np.asarray([s for s, _ in done], dtype=np.float64), steps)
