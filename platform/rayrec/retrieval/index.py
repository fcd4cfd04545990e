"""The item vector index: Ray Data embeds the catalog, FAISS answers nearest-neighbour queries.

On disk (``cfg.index_dir``, a local path or a URI):
  index.faiss        the FAISS index (inner product on unit vectors = cosine)
  embeddings.npy     (n, dim) float32 item embeddings, row r is item ``item_idx[r]``
  items.parquet      item_idx, category per row
  meta.json          encoder, dim, index type, count, nlist/nprobe
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterable
from typing import Any

import faiss
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray

from rayrec import storage
from rayrec.data.store import load_items
from rayrec.retrieval.encoder import TextEncoder
from rayrec.runtime import init_ray

INDEX_FILE = "index.faiss"
EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.parquet"
META_FILE = "meta.json"


class _EmbedBatch:
    """Ray Data actor: holds one encoder, embeds a batch of item texts."""

    def __init__(self, backbone: str, max_length: int, batch_size: int) -> None:
        self.encoder = TextEncoder(backbone, max_length=max_length, batch_size=batch_size)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        emb = self.encoder.encode(batch["text"].tolist())
        return pd.DataFrame({"item_idx": batch["item_idx"].to_numpy(), "embedding": list(emb)})


def embed_items_ray(
    items: pd.DataFrame, backbone: str, batch_size: int = 128, num_actors: int = 1, max_length: int = 128
) -> np.ndarray:
    """Embed ``items.text`` with a Ray Data actor pool; returns rows aligned with ``items``."""
    frame = items[["item_idx", "text"]].reset_index(drop=True)
    # Several blocks so that every actor in the pool gets work.
    n_blocks = max(1, min(len(frame), num_actors * 4, math.ceil(len(frame) / batch_size)))
    ds = ray.data.from_pandas([frame.iloc[c] for c in np.array_split(np.arange(len(frame)), n_blocks)])
    out = ds.map_batches(
        _EmbedBatch,
        fn_constructor_kwargs={"backbone": backbone, "max_length": max_length, "batch_size": batch_size},
        batch_size=batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
    ).to_pandas()
    emb = dict(zip(out["item_idx"].tolist(), out["embedding"], strict=True))
    missing = [i for i in items["item_idx"].tolist() if i not in emb]
    if missing:
        raise RuntimeError(f"embedding lost {len(missing)} items (first: {missing[:5]})")
    return np.stack([np.asarray(emb[i], dtype=np.float32) for i in items["item_idx"].tolist()])


def choose_index_type(n: int, index_type: str, exact_max_items: int) -> str:
    """'auto' means exact (flat) up to exact_max_items, IVF-Flat above."""
    if index_type == "auto":
        return "flat" if n <= exact_max_items else "ivf"
    return index_type


def make_faiss_index(
    embeddings: np.ndarray, index_type: str, nlist: int | None = None, nprobe: int = 16, seed: int = 0
) -> tuple[faiss.Index, dict[str, Any]]:
    """Build a filled inner-product FAISS index of the given type; returns it and its settings."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    info: dict[str, Any] = {"type": index_type}
    if index_type == "flat":
        index = faiss.IndexFlatIP(d)
    elif index_type == "ivf":
        # ~4 sqrt(n) lists, but k-means wants >= 39 training points per centroid.
        want = nlist or max(1, int(4 * math.sqrt(n)))
        nlist = max(1, min(want, n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = min(nprobe, nlist)
        info.update(nlist=nlist, nprobe=index.nprobe)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(64, nprobe * 4)
        info.update(M=32, efSearch=index.hnsw.efSearch)
    else:
        raise ValueError(f"unknown index type {index_type!r} (expected flat, ivf or hnsw)")
    index.add(x)
    return index, info


class ItemIndex:
    """A loaded item index: FAISS plus the row -> item_idx mapping, categories and embeddings."""

    def __init__(
        self,
        index: faiss.Index,
        item_idxs: np.ndarray,
        embeddings: np.ndarray,
        categories: Iterable[str],
        meta: dict[str, Any],
    ) -> None:
        self.index = index
        self.item_idxs = np.asarray(item_idxs, dtype=np.int64)
        self.item_embeddings = np.asarray(embeddings, dtype=np.float32)
        self.categories = np.asarray([str(c) for c in categories], dtype=object)
        self.meta = meta
        self._row_of = {int(i): r for r, i in enumerate(self.item_idxs)}
        if len(self.item_idxs) != len(self.item_embeddings) or len(self.categories) != len(self.item_idxs):
            raise ValueError("index, item ids, categories and embeddings must have one row per item")

    @classmethod
    def from_embeddings(
        cls,
        item_idxs: np.ndarray,
        embeddings: np.ndarray,
        categories: Iterable[str],
        index_type: str = "flat",
        nlist: int | None = None,
        nprobe: int = 16,
        encoder: str = "",
    ) -> ItemIndex:
        """Build an in-memory inner-product index (unit-norm text embeddings: cosine; the
        retriever's item vectors: its own scores)."""
        index, info = make_faiss_index(embeddings, index_type, nlist=nlist, nprobe=nprobe)
        meta = {"encoder": encoder, "dim": int(embeddings.shape[1]), "count": int(len(item_idxs)), **info}
        return cls(index, item_idxs, embeddings, categories, meta)

    def __len__(self) -> int:
        return len(self.item_idxs)

    @property
    def dim(self) -> int:
        return int(self.item_embeddings.shape[1])

    def rows(self, item_idxs: Iterable[int]) -> np.ndarray:
        """Row positions of the given item ids (KeyError naming the first unknown id)."""
        out = []
        for i in item_idxs:
            if int(i) not in self._row_of:
                raise KeyError(f"item_idx {int(i)} is not in the index")
            out.append(self._row_of[int(i)])
        return np.asarray(out, dtype=np.int64)

    def has(self, item_idx: int) -> bool:
        return int(item_idx) in self._row_of

    def embeddings_for(self, item_idxs: Iterable[int]) -> np.ndarray:
        """Embeddings of the given items, in the given order."""
        return self.item_embeddings[self.rows(item_idxs)]

    def add(self, item_idxs: Iterable[int], vectors: np.ndarray, categories: Iterable[str]) -> None:
        """Append items to this (loaded) index: items added to a running endpoint's catalog.

        All or nothing: every check and copy happens before FAISS's ``add``, the last step, so
        an error leaves the index as it was. An IVF index puts them in its trained lists
        (no retraining); search and :meth:`embeddings_for` see them at once.
        """
        idxs = np.asarray(list(item_idxs), dtype=np.int64)
        vec = np.ascontiguousarray(vectors, dtype=np.float32)
        cats = np.asarray([str(c) for c in categories], dtype=object)
        if vec.ndim != 2 or vec.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}); got {vec.shape}")
        if not len(idxs) == len(vec) == len(cats):
            raise ValueError(f"item_idxs ({len(idxs)}), vectors ({len(vec)}) and categories ({len(cats)}) "
                             "must have one row per item")
        taken = [int(i) for i in idxs if int(i) in self._row_of]
        if taken or len(set(idxs.tolist())) != len(idxs):
            raise ValueError(f"item_idx already in the index or repeated: {taken[:5] or idxs.tolist()[:5]}")
        if not np.all(np.isfinite(vec)):
            raise ValueError("vectors must be finite")
        if len(idxs) == 0:
            return
        start = len(self.item_idxs)
        all_idxs = np.concatenate([self.item_idxs, idxs])
        all_vec = np.concatenate([self.item_embeddings, vec])
        all_cats = np.concatenate([self.categories, cats])
        self.index.add(vec)
        self.item_idxs, self.item_embeddings, self.categories = all_idxs, all_vec, all_cats
        self._row_of.update({int(i): start + r for r, i in enumerate(idxs)})
        self.meta["count"] = len(self.item_idxs)

    def save(self, out_dir: str) -> str:
        """Write the index files to ``out_dir`` (a local path or a URI)."""
        storage.write_bytes(storage.join(out_dir, INDEX_FILE), faiss.serialize_index(self.index).tobytes())
        buf = io.BytesIO()
        np.save(buf, self.item_embeddings)
        storage.write_bytes(storage.join(out_dir, EMBEDDINGS_FILE), buf.getvalue())
        storage.write_table(pd.DataFrame({"item_idx": self.item_idxs, "category": self.categories.astype(str)}),
                            storage.join(out_dir, ITEMS_FILE))
        storage.write_text(storage.join(out_dir, META_FILE), json.dumps(self.meta, indent=2))  # last
        return str(out_dir)

    @classmethod
    def load(cls, index_dir: str) -> ItemIndex:
        """Load an index written by :func:`build_index` (or :meth:`save`), local or remote."""
        files = {f: storage.join(str(index_dir), f) for f in (INDEX_FILE, EMBEDDINGS_FILE, ITEMS_FILE, META_FILE)}
        missing = [f for f, loc in files.items() if not storage.is_file(loc)]
        if missing:
            raise FileNotFoundError(f"no item index at {index_dir} (missing {', '.join(missing)}); run build_index")
        fs, path = storage.resolve_fs(files[ITEMS_FILE])
        items = pq.read_table(path, filesystem=fs).to_pandas()
        meta = json.loads(storage.read_text(files[META_FILE]))
        index = faiss.deserialize_index(np.frombuffer(storage.read_bytes(files[INDEX_FILE]), dtype=np.uint8))
        if meta.get("type") == "ivf":
            index.nprobe = int(meta.get("nprobe", 16))
        embeddings = np.load(io.BytesIO(storage.read_bytes(files[EMBEDDINGS_FILE])))
        return cls(index, items["item_idx"].to_numpy(), embeddings, items["category"], meta)

    def search(
        self,
        query: np.ndarray,
        k: int,
        exclude: set[int] | None = None,
        category: str | None = None,
    ) -> list[tuple[int, float]] | list[list[tuple[int, float]]]:
        """Top-k (item_idx, score) by inner product, best first, skipping ``exclude`` and, if
        given, items outside ``category``. A (d,) query gives one list; (n, d) gives n lists."""
        q = np.asarray(query, dtype=np.float32)
        if q.ndim not in (1, 2) or q.shape[-1] != self.dim:
            raise ValueError(f"query must have shape ({self.dim},) or (n, {self.dim}); got {q.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = np.ascontiguousarray(q.reshape(-1, self.dim))
        results = self._search_many(queries, k, exclude or set(), category)
        return results[0] if q.ndim == 1 else results

    def _search_many(
        self, queries: np.ndarray, k: int, exclude: set[int], category: str | None
    ) -> list[list[tuple[int, float]]]:
        n = len(self)
        allowed = np.ones(n, dtype=bool)
        if category is not None:
            allowed &= self.categories == category
        if exclude:
            rows = [self._row_of[int(i)] for i in exclude if int(i) in self._row_of]
            allowed[rows] = False
        n_allowed = int(allowed.sum())
        k_eff = min(k, n_allowed)
        if k_eff == 0:
            return [[] for _ in queries]
        # Oversample so that filtering still leaves k; fall back to exact search when it doesn't.
        fetch = min(n, int(math.ceil((k_eff + len(exclude)) * n / max(n_allowed, 1) * 1.5)) + 8)
        scores, rows = self.index.search(queries, fetch)
        out = []
        for qi in range(len(queries)):
            hits = [
                (int(self.item_idxs[r]), float(s))
                for r, s in zip(rows[qi], scores[qi], strict=True)
                if r >= 0 and allowed[r]
            ][:k_eff]
            if len(hits) < k_eff:
                hits = self._exact(queries[qi], k_eff, allowed)
            out.append(hits)
        return out

    def _exact(self, query: np.ndarray, k: int, allowed: np.ndarray) -> list[tuple[int, float]]:
        rows = np.flatnonzero(allowed)
        scores = self.item_embeddings[rows] @ query
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(self.item_idxs[rows[t]]), float(scores[t])) for t in top]


def build_index(cfg) -> str:
    """Embed every catalog item with Ray Data, build the FAISS index, save it to ``cfg.index_dir``."""
    init_ray(cfg.ray)
    rc = cfg.retrieval
    items = load_items(cfg.data_dir)
    if len(items) == 0:
        raise ValueError(f"the catalog at {cfg.data_dir} has no items")
    encoder = rc.encoder or cfg.model.backbone
    t0 = time.time()
    emb = embed_items_ray(items, encoder, batch_size=rc.embed_batch_size, num_actors=rc.embed_actors)
    kind = choose_index_type(len(items), rc.index_type, rc.exact_max_items)
    index = ItemIndex.from_embeddings(
        items["item_idx"].to_numpy(), emb, items["category"].fillna("").astype(str),
        index_type=kind, nlist=rc.nlist, nprobe=rc.nprobe, encoder=encoder,
    )
    index.meta["embed_seconds"] = round(time.time() - t0, 2)
    return index.save(cfg.index_dir)
