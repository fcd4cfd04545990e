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

Items added to the running endpoint (``POST /items``, :mod:`rayrec.serving.catalog`) join the
text index, the retriever's index (when it has a text-to-vector encoder) and the feature store
as new items; hidden items are dropped from every path. Each replica loads what any replica
committed within ``serve.catalog_refresh_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from ray import serve
from ray.serve.handle import DeploymentHandle

from rayrec.config import RayrecConfig, validate_config
from rayrec.data.store import load_histories, load_items, load_users
from rayrec.itemtower.vectors import NewItemEncoder, encoder_files
from rayrec.models.prior import popularity_prior, ranker_priors
from rayrec.retrieval.encoder import TextEncoder
from rayrec.retrieval.index import ItemIndex
from rayrec.retrieval.query import blend_hits, combined_query
from rayrec.seqrec.data import load_sequences
from rayrec.seqrec.scorer import SeqRetriever
from rayrec.serving.calls import wait_for
from rayrec.serving.catalog import (
    CatalogCommitter,
    CatalogLog,
    catalog_dir,
    check_hidden_ids,
    check_new_items,
    item_texts,
    model_key,
    new_commit_id,
    rows_by_action,
)

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
        self.items = load_items(data_dir).reset_index(drop=True)

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

    @property
    def next_item_idx(self) -> int:
        """The item_idx the next added item gets (the trained catalog is 0..n-1)."""
        return int(self.items["item_idx"].max()) + 1 if len(self.items) else 0

    def add_items(self, item_idxs: np.ndarray, item_ids: list[str], titles: list[str], categories: list[str],
                  texts: list[str]) -> None:
        """Items added to the running catalog: readable like any item (texts for the ranker and
        explanations), popularity 0 (last on the popularity path) and new, so exploration
        policies that favour new items can find them."""
        rows = pd.DataFrame({"item_idx": np.asarray(item_idxs, dtype=np.int64), "item_id": item_ids,
                             "title": titles, "category": categories, "text": texts,
                             "popularity": np.zeros(len(item_ids), dtype=np.int64)})
        start = len(self.items)
        self.items = pd.concat([self.items, rows.astype(self.items.dtypes.to_dict())], ignore_index=True)
        for r, (i, item_id, cat) in enumerate(zip(rows["item_idx"].tolist(), item_ids, categories, strict=True)):
            self.item_idx_of[item_id] = i
            self._row_of[i] = start + r
            self.pop_score[i] = 0.0
            self.category_of[i] = cat
            self.new_items.add(i)
        self.categories.update(categories)
        self.popular = np.concatenate([self.popular, rows["item_idx"].to_numpy()])


def _plain(priors: list[np.ndarray] | None) -> list | None:
    return None if priors is None else priors[0].tolist()


def resolve_encoder(cfg: RayrecConfig, index_meta: dict[str, Any]) -> str:
    """The query encoder must be the one the index was built with."""
    return index_meta.get("encoder") or cfg.retrieval.encoder or cfg.model.backbone


@serve.deployment(name="Retrieval")
class RetrievalDeployment:
    """Loads the item index and feature store once per replica; answers candidate requests."""

    def __init__(self, cfg: dict[str, Any], generation: DeploymentHandle | None = None) -> None:
        self.cfg = validate_config(cfg, "serve retrieval")
        self.generation = generation
        self.index = ItemIndex.load(self.cfg.index_dir)
        self.store = FeatureStore(self.cfg.data_dir)
        self.encoder_name = resolve_encoder(self.cfg, self.index.meta)
        self.retriever, self.retriever_error = None, None
        if self.cfg.retriever.enabled:
            try:
                self.retriever = SeqRetriever(self.cfg.retriever_model_dir,
                                              ItemIndex.load(self.cfg.retriever_index_dir))
            except (FileNotFoundError, ValueError) as e:  # degrade to the text index, visibly
                self.retriever_error = str(e)
                log.warning("sequential retriever unavailable, history queries use the text index: %s", e)
        self._encoder_cls = TextEncoder
        self._encoder = None  # loaded on the first text query: most requests never need it
        self._init_catalog()
        log.info(
            "retrieval ready: %d items in index (%s, %d added, %d hidden), %d users, encoder %s",
            len(self.index), self.index.meta.get("type"), self.n_added, len(self.hidden),
            len(self.store.user_idx_of), self.encoder_name,
        )

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = self._encoder_cls(self.encoder_name)
        return self._encoder

    def catalog_info(self) -> dict[str, Any]:
        return {"n_items": len(self.index), "n_users": len(self.store.user_idx_of), "encoder": self.encoder_name,
                "history_retrieval": "sequential retriever" if self.retriever else "text index",
                "retriever_error": self.retriever_error, "added_items": self.n_added,
                "hidden_items": len(self.hidden), "catalog_version": self.catalog.seq,
                "catalog_error": self.catalog_error}

    def lookup_item(self, item_id: str) -> int | None:
        """item_idx of a raw item id, or None when it is not in the catalog."""
        return self.store.item_idx_of.get(str(item_id))

    # ---- items added to / hidden from the running catalog (serving.catalog) ----------------
    def _init_catalog(self) -> None:
        """Load every item added and hidden so far: a restarted replica serves them at once."""
        sc = self.cfg.serve
        self.catalog = CatalogLog(catalog_dir(self.cfg))
        self.committer = CatalogCommitter(self.catalog.root, sc.catalog_compact_segments)
        self.catalog_error: str | None = None
        self.hidden: set[int] = set()
        self.n_base = self.store.next_item_idx  # item_idx below: the trained catalog
        self.n_added = 0
        self._text_key = f"{self.encoder_name}:{self.index.dim}"
        self._retriever_key = None
        if self.retriever is not None:
            # The files NewItemEncoder reads: vectors they did not make are embedded again.
            self._retriever_key = model_key(encoder_files(self.cfg))
        self._new_item_encoder = None  # NewItemEncoder: loaded when an item first needs it
        self._item_encoder = None  # a TextEncoder of its own (a tokenizer is not thread-safe)
        self._embed_lock = threading.Lock()
        self._loading: asyncio.Task | None = None  # the catalog load in flight (one at a time)
        self._poller: asyncio.Task | None = None
        self._checked_at = time.monotonic()
        try:
            batch = self._load_new()
        except Exception as e:  # served without them, said in /healthz; the poller retries
            self.catalog_error = f"{type(e).__name__}: {e}"
            log.error("catalog at %s unreadable, serving the trained catalog only: %s", self.catalog.root, e)
        else:
            self._apply(batch)

    def _new_items_encoder(self):
        """NewItemEncoder: text -> retriever vector (tuned tower or the retriever's text part)."""
        if self._new_item_encoder is None:
            self._new_item_encoder = NewItemEncoder(self.cfg)
        return self._new_item_encoder

    def _embed(self, texts: list[str], release_texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(text index vectors, retriever vectors or None) of added items; in a worker thread."""
        with self._embed_lock:
            if self._item_encoder is None:
                self._item_encoder = self._encoder_cls(self.encoder_name)
            text = self._item_encoder.encode(texts)
            retriever = None
            if self.retriever is not None and self._new_items_encoder().available:
                retriever = self._new_items_encoder().encode(release_texts)
        return text, retriever

    def _retriever_note(self) -> str | None:
        """What an answer to POST /items says when its items miss the sequential retriever."""
        if self.retriever is None or self._new_items_encoder().available:
            return None
        return (f"added to the text index only ({self._new_items_encoder().reason}): the items answer free-text "
                "queries, and history requests only through text, not the sequential retriever")

    def _load_new(self) -> tuple | None:
        """The commits since the last load, their vectors ready (stored ones when this replica's
        models made them, else embedded now); runs in a worker thread, applies nothing."""
        new = self.catalog.read_new()  # the log advances when the batch is applied
        if new is None:
            return None
        rows, doc = new
        adds, hides = rows_by_action(rows)
        text_vec, text_ok = self._stored_vectors(adds, "text", self._text_key)
        retr_vec, retr_ok = self._stored_vectors(adds, "retriever", self._retriever_key)
        known = self.store.item_idx_of  # (skipped when applied: no use embedding them)
        stale = [r for r in range(len(adds)) if adds["item_id"][r] not in known
                 and (not text_ok[r] or (self.retriever is not None and not retr_ok[r]))]
        if stale:  # made by other models (a retrained retriever, another encoder): embed again
            log.info("catalog: embedding %d added items again for this replica's models", len(stale))
            release = [item_texts(str(adds["title"][r]), list(adds["genres"][r]), None)[1] for r in stale]
            text, retr = self._embed([str(adds["text"][r]) for r in stale], release)
            for j, r in enumerate(stale):
                text_vec[r] = text[j]
                retr_vec[r] = None if retr is None else retr[j]
        return adds, text_vec, retr_vec if self.retriever is not None else None, hides, doc

    @staticmethod
    def _stored_vectors(adds: pd.DataFrame, kind: str, key: str | None) -> tuple[list, list[bool]]:
        """Each row's stored ``kind`` vector and whether this replica's model (``key``) made it
        (then a null vector means that model has none, e.g. an ID-only retriever)."""
        ok = [key is not None and k == key for k in adds[f"{kind}_key"]]
        vec = [np.asarray(v, dtype=np.float32) if good and v is not None else None
               for good, v in zip(ok, adds[f"{kind}_vector"], strict=True)]
        return vec, ok

    def _apply(self, batch: tuple | None) -> None:
        """Add a loaded batch to the indexes and the store, in commit order (no await: requests
        on this replica see all of it or none). Ids the catalog holds already are skipped, as
        every replica skips them, so every replica numbers the rest alike."""
        if batch is None:
            return
        adds, text_vec, retr_vec, hides, doc = batch
        keep = [r for r, i in enumerate(adds["item_id"]) if i not in self.store.item_idx_of]
        if keep:
            a = adds.iloc[keep]
            idxs = np.arange(self.store.next_item_idx, self.store.next_item_idx + len(keep), dtype=np.int64)
            cats = a["category"].astype(str).tolist()
            self.index.add(idxs, np.stack([text_vec[r] for r in keep]), cats)
            with_vec = [j for j, r in enumerate(keep) if retr_vec is not None and retr_vec[r] is not None]
            if with_vec:
                self.retriever.index.add(idxs[with_vec], np.stack([retr_vec[keep[j]] for j in with_vec]),
                                         [cats[j] for j in with_vec])
            self.store.add_items(idxs, a["item_id"].astype(str).tolist(), a["title"].astype(str).tolist(), cats,
                                 a["text"].astype(str).tolist())
            self.n_added += len(keep)
        self.hidden.update(self.store.item_idx_of[i] for i in hides if i in self.store.item_idx_of)
        self.catalog.advance(doc)

    async def _load_and_apply(self) -> None:
        try:
            batch = await asyncio.to_thread(self._load_new)
        except Exception as e:  # storage failing: served as it is, said in /healthz, tried again
            self.catalog_error = f"{type(e).__name__}: {e}"
            log.warning("catalog refresh from %s failed: %s", self.catalog.root, e)
            return
        finally:
            self._checked_at = time.monotonic()
        self.catalog_error = None
        self._apply(batch)

    async def _refresh(self, timeout_s: float, fresh: bool = False) -> None:
        """Load what was committed since the last load. One load runs at a time; its result is
        applied even when the caller stops waiting. ``fresh``: it must start after this call
        (to see a commit just made), not join one already running."""
        self._same_loop()
        if fresh and self._loading is not None and not self._loading.done():
            await wait_for(asyncio.shield(self._loading), timeout_s)
        if self._loading is None or self._loading.done():
            self._loading = asyncio.get_running_loop().create_task(self._load_and_apply())
        await wait_for(asyncio.shield(self._loading), timeout_s)

    def _same_loop(self) -> None:
        """Serve runs a replica on one event loop for good; a caller that runs it on a loop per
        call (a benchmark's ``asyncio.run``) gets tasks of its own, never a dead loop's."""
        loop = asyncio.get_running_loop()
        if getattr(self, "_loop", None) is not loop:
            self._loop, self._loading, self._poller = loop, None, None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.serve.catalog_refresh_s)
            try:
                await self._refresh(max(10.0, self.cfg.serve.catalog_refresh_s))
            except TimeoutError:
                log.warning("catalog refresh from %s is slow; still waiting for it", self.catalog.root)

    async def _fresh(self) -> None:
        """Keep this replica within ``serve.catalog_refresh_s`` of the persisted catalog: the
        poller runs on the replica's event loop (started by the first request); a request that
        finds the last check too old (the poller just started) waits for one, briefly."""
        self._same_loop()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        interval = self.cfg.serve.catalog_refresh_s
        if time.monotonic() - self._checked_at > 3 * interval:
            with contextlib.suppress(TimeoutError):  # served from what is loaded; the load goes on
                await self._refresh(timeout_s=interval)

    def _taken(self, item_id: str) -> str | None:
        idx = self.store.item_idx_of.get(item_id)
        if idx is None:
            return None
        return "item_id: already in the catalog" if idx < self.n_base else "item_id: already added"

    async def add_items(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """POST /items (the ingress checked the key and the schema): check each row, embed the
        good ones here, commit them, then load the commit as every replica does. Returns
        ``{"items": [{item_id, item_idx, title, category, retriever}], "rejected", "note", "version"}``."""
        sc = self.cfg.serve
        deadline = time.monotonic() + sc.admin_timeout_s
        await self._refresh(sc.admin_timeout_s, fresh=True)  # what other replicas added counts
        room = max(sc.max_added_items - self.n_added, 0)
        good, rejected = check_new_items(rows, self._taken, sc.max_text_length, room, sc.max_added_items)
        done: set[str] = set()
        if good:
            text, retr = await wait_for(asyncio.to_thread(
                self._embed, [r["text"] for r in good], [r["release_text"] for r in good]), sc.admin_timeout_s)
            persisted = [{k: r[k] for k in ("item_id", "title", "genres", "extra_text", "text", "category")}
                         | {"text_key": self._text_key, "text_vector": text[j],
                            "retriever_key": self._retriever_key,  # null vector: this retriever has none
                            "retriever_vector": retr[j] if retr is not None else None}
                         for j, r in enumerate(good)]
            result = await self.committer.commit(new_commit_id(), persisted, [], sc.max_added_items,
                                                 max(deadline - time.monotonic(), 1.0))
            done = set(result["done"])
            rejected += [{"item_id": r["item_id"], "index": r["index"], "reason": result["rejected"][r["item_id"]]}
                         for r in good if r["item_id"] in result["rejected"]]
            await self._refresh(max(deadline - time.monotonic(), 1.0), fresh=True)
        items = [{"item_id": r["item_id"], "item_idx": self.store.item_idx_of.get(r["item_id"], -1),
                  "title": r["title"], "category": r["category"],
                  "retriever": self.retriever is not None and self.retriever.index.has(
                      self.store.item_idx_of.get(r["item_id"], -1))}
                 for r in good if r["item_id"] in done]
        return {"items": items, "rejected": sorted(rejected, key=lambda r: r["index"]),
                "note": self._retriever_note() if items else None, "version": self.catalog.seq}

    async def hide_items(self, item_ids: list[str]) -> dict[str, Any]:
        """POST /items/hide: never recommend these items again (any path), on every replica."""
        sc = self.cfg.serve
        await self._refresh(sc.admin_timeout_s, fresh=True)
        good, rejected = check_hidden_ids(
            [str(i) for i in item_ids], lambda i: i in self.store.item_idx_of,
            lambda i: self.store.item_idx_of[i] in self.hidden)
        done: set[str] = set()
        if good:
            result = await self.committer.commit(new_commit_id(), [], [r["item_id"] for r in good],
                                                 sc.max_added_items, sc.admin_timeout_s)
            done = set(result["done"])
            rejected += [{"item_id": r["item_id"], "index": r["index"], "reason": result["rejected"][r["item_id"]]}
                         for r in good if r["item_id"] in result["rejected"]]
            await self._refresh(sc.admin_timeout_s, fresh=True)
        rows = self.store.item_rows([self.store.item_idx_of[r["item_id"]] for r in good if r["item_id"] in done])
        items = [{"item_id": str(i), "item_idx": int(x), "title": str(t), "category": str(c)}
                 for i, x, t, c in zip(rows["item_id"], rows["item_idx"], rows["title"], rows["category"], strict=True)]
        return {"items": items, "rejected": sorted(rejected, key=lambda r: r["index"]), "version": self.catalog.seq}

    async def retrieve(self, req: RetrievalRequest) -> dict[str, Any]:
        """Candidates best first with metadata, embeddings and how the query was formed
        (or ``{"error": msg}`` for a request naming unknown items)."""
        t0 = time.perf_counter()
        await self._fresh()
        store = self.store
        user_idx = store.user_idx_of.get(str(req.user_id), -1) if req.user_id is not None else -1
        unknown = [i for i in req.history if i not in store.item_idx_of]
        if unknown:  # a client error: reported back, not raised (no replica error logs)
            return {"error": f"unknown item ids in history: {unknown[:10]}"}
        if req.category is not None and req.category not in store.categories:
            return {"error": f"unknown category {req.category!r}; known: {sorted(store.categories)[:50]}"}
        history = list(store.history_of.get(user_idx, [])) + [store.item_idx_of[i] for i in req.history]
        exclude = set(history) | self.hidden
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
        hits = [(i, s) for i, s in hits if i not in self.hidden]  # hidden while this request ran
        idxs = [i for i, _ in hits]
        rows = store.item_rows(idxs)
        return {
            "user_idx": user_idx,
            "known_user": user_idx >= 0,
            "source": source,
            "history": history,
            "sent_history": [store.item_idx_of[i] for i in req.history],  # what the client itself sent
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
                if self.index.has(int(i)) and int(i) not in self.hidden
                and (category is None or self.store.category_of[int(i)] == category)], None

    def _sequential(self, history: list[int], exclude: set[int], k: int,
                    category: str | None) -> list[tuple[int, float]]:
        """The retriever's top-k (log-lift scores), the same call as offline evaluation; its
        index holds the added items and ``exclude`` drops seen and hidden ones there."""
        depth = k if category is None else min(len(self.index), 20 * k)  # a category: search deeper (rare)
        items, scores = self.retriever.retrieve([history], depth, [sorted(exclude)])[0]
        return [(int(i), float(s)) for i, s in zip(items, scores, strict=True)
                if int(i) not in exclude and (category is None or self.store.category_of.get(int(i)) == category)][:k]

    def _text(self, history: list[int] | None, text: str | None, exclude: set[int], k: int,
              category: str | None) -> list[tuple[int, float]]:
        """The text index's top-k for a history and/or free-text query."""
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
