"""Generated recommendation lists for many users: the full-catalog evaluation's view of the
generator (and the benchmark's). One model, one trie, one prompt per user."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from rayrec.generative import prompts
from rayrec.generative.decode import generate_items
from rayrec.generative.trie import CatalogTrie, title_tokens
from rayrec.models.backbone import resolve_backbone


@dataclass
class Generator:
    """A causal LM (optionally with a LoRA adapter) and the catalog it may name."""

    model: object
    tokenizer: object
    trie: CatalogTrie
    titles: np.ndarray
    # (seconds, decoding steps) per request, the latest 10,000 (a serving replica runs for days)
    timings: deque = field(default_factory=lambda: deque(maxlen=10_000))

    @classmethod
    def load(cls, backbone: str, titles: np.ndarray, adapter: str | None = None) -> Generator:
        path = resolve_backbone(backbone)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if adapter:
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        return cls(model.eval(), tokenizer, CatalogTrie.from_titles(tokenizer, titles.tolist()), titles)

    def recommend(self, history: np.ndarray, k: int, request: str | None = None,
                  history_items: int = 10, beams: int | None = None,
                  exclude: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Top-k unseen items for one user (their last ``history_items`` titles and/or a request);
        ``exclude``: more items never to name (e.g. hidden from the served catalog)."""
        prompt = prompts.render(self.tokenizer, self.titles[history[-history_items:]].tolist(), request)
        t0 = time.perf_counter()
        banned = [*history.tolist(), *exclude]
        out = generate_items(self.model, self.tokenizer, self.trie, [prompt], k, [banned], beams)[0]
        self.timings.append((time.perf_counter() - t0, out.forward_passes))
        return out.items, out.scores

    def add_titles(self, titles: list[str]) -> None:
        """Items added to the running catalog: their titles become nameable (item = the next index)."""
        for seq in title_tokens(self.tokenizer, titles):
            self.trie.add(seq)
        self.titles = np.concatenate([self.titles.astype(object), np.asarray(titles, dtype=object)])

    def lists(self, histories: list[np.ndarray], k: int, **kw) -> list[np.ndarray]:
        return [self.recommend(h, k, **kw)[0] for h in histories]

    def latency(self) -> dict[str, float]:
        """p50/p99 seconds per request and ms per decoding step, over the requests so far."""
        secs = np.array([s for s, _ in self.timings])
        per_step = np.array([s / max(n, 1) for s, n in self.timings])
        return {"requests": len(secs), "p50_s": float(np.percentile(secs, 50)),
                "p99_s": float(np.percentile(secs, 99)), "ms_per_step_p50": float(np.median(per_step) * 1000)}
