"""Generation deployment: the causal LM's two roles in the endpoint, on its own replicas (so it
scales, and moves to a GPU, apart from ranking).

generate  the user's recent titles and/or free-text request -> k catalog items, written by
          the LM through the catalog trie (:mod:`rayrec.generative`), seen items banned; the
          retrieval deployment calls it as a candidate source (``source: generative|both``).
explain   one sentence per top item of a slate, within the request's deadline, each checked
          by :mod:`rayrec.generative.grounding` (only grounded ones are served; all are logged).

Items added to the running catalog (:mod:`rayrec.serving.catalog`) join the title trie and the
texts here too, each replica loading the commits itself (at most every
``serve.catalog_refresh_s``, at once when a request names an item it does not know yet), with
the same item_idx as the retrieval replicas give them; hidden items are never generated.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import torch
from ray import serve

from rayrec.config import validate_config
from rayrec.data.store import load_items
from rayrec.generative.adapter import resolve_adapter
from rayrec.generative.explain import Explainer
from rayrec.generative.grounding import GroundingCheck
from rayrec.generative.lists import Generator
from rayrec.serving.catalog import CatalogLog, catalog_dir, rows_by_action

log = logging.getLogger("ray.serve")


@serve.deployment(name="Generation")
class GenerationDeployment:
    """One causal LM (optionally with a tuned LoRA adapter merged) and the catalog it may name."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = validate_config(cfg, "serve generation")
        gc = self.cfg.serve.generation
        if gc.num_gpus == 0:
            torch.set_num_threads(max(1, int(gc.num_cpus)))  # the replica's CPUs, no more
        items = load_items(self.cfg.data_dir).sort_values("item_idx")
        if not np.array_equal(items["item_idx"].to_numpy(), np.arange(len(items))):
            raise ValueError(f"items in {self.cfg.data_dir} are not indexed 0..n-1")
        self.texts = items["text"].astype(str).to_numpy()
        t0 = time.perf_counter()
        adapter = resolve_adapter(self.cfg, gc.adapter, gc.backbone, gc.history_items, "serve.generation.adapter")
        self.generator = Generator.load(gc.backbone, items["title"].astype(str).to_numpy(), adapter)
        if gc.num_gpus > 0 and torch.cuda.is_available():  # bf16 on a GPU; decoding reads fp32 log-probs
            self.generator.model.to("cuda", dtype=torch.bfloat16)
        self.explainer = Explainer(self.generator.model, self.generator.tokenizer, gc.explain_max_new_tokens)
        self.grounding = GroundingCheck(self.texts)
        # Serve runs these sync methods on a thread pool: one model call at a time per replica
        # (the tokenizer is not thread-safe, and the cores are the model's anyway). An explain
        # call that waited past its deadline here starts nothing (over_budget).
        self._model_lock = threading.Lock()
        self.version = f"{gc.backbone}{'+' + gc.adapter if gc.adapter else ' (zero-shot)'}"
        self.item_idx_of = {str(i): int(x) for i, x in zip(items["item_id"], items["item_idx"], strict=True)}
        self.hidden: set[int] = set()
        self.catalog = CatalogLog(catalog_dir(self.cfg), columns=["seq", "action", "item_id", "title", "text"])
        self._synced_at = 0.0
        self._sync_catalog()
        log.info("generation ready: %s, %d catalog titles, loaded in %.1fs", self.version, len(self.texts),
                 time.perf_counter() - t0)

    def _sync_catalog(self, need: list[int] = ()) -> None:
        """Load the catalog's new commits when the last check is ``serve.catalog_refresh_s`` old
        or a request names an item not loaded yet. Called under the model lock (the trie and
        texts change here). A failed read keeps what is loaded (retried on the next call)."""
        stale = time.monotonic() - self._synced_at > self.cfg.serve.catalog_refresh_s
        if not stale and all(int(i) < len(self.texts) for i in need):
            return
        self._synced_at = time.monotonic()
        try:
            rows = self.catalog.poll()
        except Exception as e:
            log.warning("generation: catalog at %s unreadable: %s", self.catalog.root, e)
            return
        if rows is None:
            return
        adds, hides = rows_by_action(rows)
        adds = adds[~adds["item_id"].isin(self.item_idx_of)].drop_duplicates("item_id")  # as retrieval skips them
        if len(adds):
            start = len(self.texts)
            self.item_idx_of.update({i: start + r for r, i in enumerate(adds["item_id"].astype(str))})
            self.generator.add_titles(adds["title"].astype(str).tolist())
            self.texts = np.concatenate([self.texts.astype(object), adds["text"].astype(str).to_numpy(dtype=object)])
            self.grounding = GroundingCheck(self.texts)  # the new titles are facts it may name
        self.hidden.update(self.item_idx_of[i] for i in hides if i in self.item_idx_of)

    def info(self) -> dict[str, Any]:
        out = {"model": self.version, "catalog_titles": len(self.texts)}
        return out | self.generator.latency() if self.generator.timings else out

    def generate(self, history: list[int], query: str | None, k: int) -> dict[str, Any]:
        """Up to ``k`` unseen items, best first, with their title log-probabilities."""
        gc = self.cfg.serve.generation
        t0 = time.perf_counter()
        with self._model_lock:
            self._sync_catalog(history)
            known = np.asarray([i for i in history if int(i) < len(self.texts)], dtype=np.int64)
            items, scores = self.generator.recommend(known, k, request=query, history_items=gc.history_items,
                                                     beams=max(gc.beams, k), exclude=self.hidden)
        return {"item_idx": items.tolist(), "score": scores.tolist(), "seconds": time.perf_counter() - t0}

    def explain(self, history: list[int], query: str | None, items: list[int], deadline: float) -> list[dict]:
        """Per item, best first: ``{"status": explained|ungrounded|unfinished|over_budget, "text", ...}``.

        ``deadline`` is the wall-clock time the ingress stops waiting: items that would not
        finish by then are not started."""
        out = []
        with self._model_lock:
            self._sync_catalog([*history, *items])
            texts, grounding = self.texts, self.grounding
            history = [i for i in history if int(i) < len(texts)]
            history_texts = texts[history[-self.cfg.model.max_history_items:]].tolist() if history else []
            known = [i for i in items if int(i) < len(texts)]  # the rest: committed, not readable here yet
            results = self.explainer.explain(history_texts, texts[known].tolist(), query, deadline) if known else []
            done = dict(zip(known, results, strict=True))
        for item in items:
            if item not in done:
                out.append({"item_idx": int(item), "status": "unavailable", "text": None, "seconds": 0.0})
                continue
            e = done[item]
            if e is None:  # not started: it would not have finished by the deadline
                out.append({"item_idx": int(item), "status": "over_budget", "text": None, "seconds": 0.0})
                continue
            row = {"item_idx": int(item), "text": e.text or None, "seconds": e.seconds, "tokens": e.tokens}
            if e.cut is not None:  # half a sentence is logged, never served
                row |= {"status": "over_budget" if e.cut == "time" else "unfinished", "unsupported": []}
            else:
                g = grounding.check(e.text, texts[item], history_texts, query)
                row |= {"status": "explained" if g.grounded else "ungrounded",
                        "unsupported": g.invented_items + g.unsupported_genres + g.unsupported_names}
            out.append(row)
        return out
