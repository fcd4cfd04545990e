"""Retrieval deployment: request -> candidate items, from two FAISS indexes.

history  the sequential retriever (:mod:`rayrec.seqrec`) reads the user's item sequence (the
         feature store's plus any items sent with the request) and searches its own item
         vectors: the same ``SeqRetriever`` code as offline evaluation. Without a trained
         retriever, the text index answers a recency-weighted history query instead.
text     free text (new users, requests) is embedded by the text encoder and searched in the
         item-text index.
both     the two lists are blended (:func:`rayrec.retrieval.query.blend_hits`).
neither  the most popular items (cold start).
LM       with ``serve.generation`` on, the generation deployment names catalog items from the
         user's titles and/or request (``source``: generative alone, or both: blended with the
         index list the same way). If it fails or is late, the index list is served and the
         response says so (``generation_error``).
Items the user has seen are excluded; a category filter applies to every path.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from ray import serve
from ray.serve.handle import DeploymentHandle

from rayrec.config import RayrecConfig, validate_config
from rayrec.models.prior import popularity_prior, ranker_priors
from rayrec.retrieval.query import blend_hits
from rayrec.serving.calls import wait_for

log = logging.getLogger("ray.serve")


@dataclass
class RetrievalRequest:
    """What the ingress asks retrieval for (raw ids as sent by the client)."""

    user_id: str | None = None
    history: list[str] = field(default_factory=list)  # raw item ids, oldest first
    query: str | None = None
    category: str | None = None
    num_candidates: int = 50
    source: str | None = None  # index | generative | both; None: serve.generation's defaults
    with_embeddings: bool = True  # the candidates' index vectors (diversity, linear policies)


class FeatureStore:
    """The preprocessing output as the serving feature store: items, users and histories."""

    def __init__(self, data_dir: str) -> None:
        from rayrec.data.store import load_histories, load_items, load_users

        self.items = load_items(data_dir).reset_index(drop=True)
        from rayrec.seqrec.data import load_sequences

        users = load_users(data_dir)
        histories = load_histories(data_dir)
        # Serving sees everything before the held-out test item: the train split + valid item.
        try:
            full = load_sequences(data_dir, "test")
            full_of = {int(u): [int(i) for i in h] for u, h in zip(full["user_idx"], full["history"], strict=True)}
        except OSError:  # a feature store without interaction logs: the histories' recent items
            full_of = {}
        self.item_idx_of = {str(i): int(x) for i, x in zip(self.items["item_id"], self.items["item_idx"], strict=True)}
        self._row_of = {int(x): r for r, x in enumerate(self.items["item_idx"])}
        self.user_idx_of = {str(u): int(x) for u, x in zip(users["user_id"], users["user_idx"], strict=True)}
        self.history_of: dict[int, list[int]] = {}
        for u, h, v in zip(histories["user_idx"], histories["history"], histories["valid_item"], strict=True):
            seq = [int(i) for i in h] + ([int(v)] if int(v) >= 0 else [])
            self.history_of[int(u)] = full_of.get(int(u), seq)
        self.popular = self.items.sort_values(["popularity", "item_idx"], ascending=[False, True])[
            "item_idx"
        ].to_numpy()
        pop = self.items["popularity"].astype(float).to_numpy()
        max_pop = max(float(pop.max()), 1.0) if len(pop) else 1.0
        self.prior = popularity_prior(self.items["popularity"].to_numpy())  # row i = item i
        # Popularity share is the retrieval score of the cold-start path.
        self.pop_score = {int(i): float(p) / max_pop for i, p in zip(self.items["item_idx"], pop, strict=True)}
        # New items: none of their interactions reached training (text is all the model has).
        self.new_items = {int(i) for i, p in zip(self.items["item_idx"], pop, strict=True) if p <= 0}
        self.categories = set(self.items["category"].astype(str))
        self.category_of = {int(i): str(c) for i, c in zip(self.items["item_idx"], self.items["category"], strict=True)}

    def item_rows(self, item_idxs: list[int]) -> pd.DataFrame:
        return self.items.iloc[[self._row_of[i] for i in item_idxs]]


def _plain(priors: list[np.ndarray] | None) -> list | None:
    return None if priors is None else priors[0].tolist()


def resolve_encoder(cfg: RayrecConfig, index_meta: dict[str, Any]) -> str:
    """The query encoder must be the one the index was built with."""
    return index_meta.get("encoder") or cfg.retrieval.encoder or cfg.model.backbone


@serve.deployment(name="Retrieval")
class RetrievalDeployment:
    """Loads the item index and feature store once per replica; answers candidate requests."""

    def __init__(self, cfg: dict[str, Any], generation: DeploymentHandle | None = None) -> None:
        from rayrec.retrieval.encoder import TextEncoder
        from rayrec.retrieval.index import ItemIndex

        self.cfg = validate_config(cfg, "serve retrieval")
        self.generation = generation
        self.index = ItemIndex.load(self.cfg.index_dir)
        self.store = FeatureStore(self.cfg.data_dir)
        self.encoder_name = resolve_encoder(self.cfg, self.index.meta)
        self.retriever, self.retriever_error = None, None
        if self.cfg.retriever.enabled:
            from rayrec.seqrec.scorer import SeqRetriever

            try:
                self.retriever = SeqRetriever(self.cfg.retriever_model_dir,
                                              ItemIndex.load(self.cfg.retriever_index_dir))
            except (FileNotFoundError, ValueError) as e:  # degrade to the text index, visibly
                self.retriever_error = str(e)
                log.warning("sequential retriever unavailable, history queries use the text index: %s", e)
        self._encoder_cls = TextEncoder
        self._encoder = None  # loaded on the first text query: most requests never need it
        log.info(
            "retrieval ready: %d items in index (%s), %d users, encoder %s",
            len(self.index), self.index.meta.get("type"), len(self.store.user_idx_of), self.encoder_name,
        )

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = self._encoder_cls(self.encoder_name)
        return self._encoder

    def catalog_info(self) -> dict[str, Any]:
        return {"n_items": len(self.index), "n_users": len(self.store.user_idx_of), "encoder": self.encoder_name,
                "history_retrieval": "sequential retriever" if self.retriever else "text index",
                "retriever_error": self.retriever_error}

    def lookup_item(self, item_id: str) -> int | None:
        """item_idx of a raw item id, or None when it is not in the catalog."""
        return self.store.item_idx_of.get(str(item_id))

    async def retrieve(self, req: RetrievalRequest) -> dict[str, Any]:
        """Candidates best first with metadata, embeddings and how the query was formed
        (or ``{"error": msg}`` for a request naming unknown items)."""
        t0 = time.perf_counter()
        store = self.store
        user_idx = store.user_idx_of.get(str(req.user_id), -1) if req.user_id is not None else -1
        unknown = [i for i in req.history if i not in store.item_idx_of]
        if unknown:  # a client error: reported back, not raised (no replica error logs)
            return {"error": f"unknown item ids in history: {unknown[:10]}"}
        if req.category is not None and req.category not in store.categories:
            return {"error": f"unknown category {req.category!r}; known: {sorted(store.categories)[:50]}"}
        history = list(store.history_of.get(user_idx, [])) + [store.item_idx_of[i] for i in req.history]
        exclude = set(history)
        text = req.query.strip() if req.query and req.query.strip() else None
        wanted = self._source(req.source, history, text)
        pending, generation_error = None, None
        if wanted != "index" and self.generation is None:  # the ingress rejects this; defensive
            wanted, generation_error = "index", "serve.generation is not enabled"
        if wanted != "index":  # the LM runs on its own replicas while the index is searched here
            pending = self.generation.generate.remote(history, text, self.cfg.serve.generation.k)
        hits, source = self._index_hits(history, text, exclude, req) if wanted != "generative" else ([], "")
        if pending is not None:
            generated, generation_error = await self._generated(pending, req.category)
            if generation_error is None:
                hits = generated if wanted == "generative" else blend_hits(
                    hits, generated, self.cfg.serve.generation.blend_weight, req.num_candidates)
                source = "generative" if wanted == "generative" else f"{source}+generative"
            elif wanted == "generative":  # the index answers instead, visibly
                hits, source = self._index_hits(history, text, exclude, req)
        idxs = [i for i, _ in hits]
        rows = store.item_rows(idxs)
        return {
            "user_idx": user_idx,
            "known_user": user_idx >= 0,
            "source": source,
            "history": history,
            "history_texts": (store.item_rows(history[-self.cfg.model.max_history_items :])["text"].tolist()
                              if history else []),
            "item_idx": idxs,
            "item_id": rows["item_id"].astype(str).tolist(),
            "title": rows["title"].astype(str).tolist(),
            "category": rows["category"].astype(str).tolist(),
            "text": rows["text"].astype(str).tolist(),
            # The ranker's priors: popularity, and the retriever's log-lift on the sequence path.
            "prior": None if not idxs else _plain(ranker_priors(
                self.cfg.model, store.prior, [idxs],
                [[s for _, s in hits]] if source == "sequence" else None)),
            "score": [float(s) for _, s in hits],
            "embeddings": (self.index.embeddings_for(idxs) if idxs else np.zeros((0, self.index.dim), np.float32))
            if req.with_embeddings else None,
            # The exploration policies' user state: the mean index vector of the recent history.
            "context": self._context(history) if req.with_embeddings else None,
            "new": [i in store.new_items for i in idxs],
            "generation_error": generation_error,
            "latency_s": time.perf_counter() - t0,
        }

    def _context(self, history: list[int], recent: int = 20) -> np.ndarray | None:
        known = [i for i in history[-recent:] if self.index.has(i)]
        return self.index.embeddings_for(known).mean(axis=0) if known else None

    def _source(self, requested: str | None, history: list[int], text: str | None) -> str:
        """index, generative or both: the request's, else the config's default for this request."""
        gc = self.cfg.serve.generation
        if requested is not None:
            return requested
        if not gc.enabled:
            return "index"
        return gc.new_user_text_source if text and not history else gc.default_source

    def _index_hits(self, history: list[int], text: str | None, exclude: set[int],
                    req: RetrievalRequest) -> tuple[list[tuple[int, float]], str]:
        """The index paths (module docstring): sequence, history/text, or popularity."""
        known_history = [i for i in history if self.index.has(i)]
        if known_history and self.retriever is not None:
            hits = self._sequential(known_history, exclude, req.num_candidates, req.category)
            if not text:
                return hits, "sequence"
            text_hits = self._text(None, text, exclude, req.num_candidates, req.category)
            return blend_hits(hits, text_hits, self.cfg.serve.text_weight, req.num_candidates), "sequence+text"
        if known_history or text:
            source = "+".join(s for s, on in (("history", known_history), ("text", text)) if on)
            return self._text(known_history or None, text, exclude, req.num_candidates, req.category), source
        return self._popular(req.num_candidates, exclude, req.category), "popularity"

    async def _generated(self, pending, category: str | None) -> tuple[list[tuple[int, float]], str | None]:
        """The LM's items (in the index, of the category), or the error that prevented them."""
        timeout = self.cfg.serve.generation.timeout_s
        try:
            out = await wait_for(pending, timeout)
        except TimeoutError:
            return [], f"generation took longer than {timeout}s"
        except Exception as e:  # a failed or restarting generation replica
            log.warning("generation failed: %s", str(e)[-2000:])
            return [], f"{type(getattr(e, 'cause', None) or e).__name__}"
        return [(int(i), float(s)) for i, s in zip(out["item_idx"], out["score"], strict=True)
                if self.index.has(int(i)) and (category is None or self.store.category_of[int(i)] == category)], None

    def _sequential(self, history: list[int], exclude: set[int], k: int,
                    category: str | None) -> list[tuple[int, float]]:
        """The retriever's top-k (log-lift scores), the same call as offline evaluation."""
        if category is None:
            items, scores = self.retriever.retrieve([history], k, [sorted(exclude)])[0]
            return list(zip(items.tolist(), scores.tolist(), strict=True))
        # A category filter: search deeper, keep the category (rare; not the evaluated path).
        items, scores = self.retriever.retrieve([history], min(len(self.index), 20 * k), [sorted(exclude)])[0]
        return [(int(i), float(s)) for i, s in zip(items, scores, strict=True)
                if self.store.category_of.get(int(i)) == category][:k]

    def _text(self, history: list[int] | None, text: str | None, exclude: set[int], k: int,
              category: str | None) -> list[tuple[int, float]]:
        """The text index's top-k for a history and/or free-text query."""
        from rayrec.retrieval.query import combined_query

        q = combined_query(self.index, history, text, self.encoder if text else None,
                           text_weight=self.cfg.serve.text_weight, recency_decay=self.cfg.retrieval.recency_decay)
        return self.index.search(q, k, exclude=exclude, category=category)

    def _popular(self, k: int, exclude: set[int], category: str | None) -> list[tuple[int, float]]:
        out = []
        for i in self.store.popular:
            i = int(i)
            if i in exclude or not self.index.has(i):
                continue
            if category is not None and self.store.category_of[i] != category:
                continue
            out.append((i, self.store.pop_score[i]))
            if len(out) == k:
                break
        return out
