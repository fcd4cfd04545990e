"""build_index end to end: Ray Data actor pool embeds a tiny catalog with a tiny random BERT."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from rayrec.config import load_config
from rayrec.models.tiny import make_tiny_backbone
from rayrec.retrieval.encoder import TextEncoder
from rayrec.retrieval.index import ItemIndex, build_index
from rayrec.retrieval.query import combined_query, history_query


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return make_tiny_backbone("bert", tmp_path_factory.mktemp("tiny_bert"))


def _catalog(data_dir, n=40):
    cats = ["Comedy", "Drama", "Horror", "Sci-Fi"]
    items = pd.DataFrame({
        "item_idx": np.arange(n, dtype=np.int64),
        "item_id": [f"m{i}" for i in range(n)],
        "title": [f"Movie number {i}" for i in range(n)],
        "category": [cats[i % 4] for i in range(n)],
        "text": [f"Movie number {i} ({cats[i % 4]}) tag{i % 7}" for i in range(n)],
        "popularity": np.arange(n, dtype=np.int64)[::-1].copy(),
    })
    data_dir.mkdir(parents=True, exist_ok=True)
    items.to_parquet(data_dir / "items.parquet", index=False)
    return items


def test_text_encoder_unit_norm_and_batch_invariant(tiny_bert):
    enc = TextEncoder(tiny_bert, batch_size=3)
    texts = ["a comedy", "a much longer horror movie title with many words", "drama", "x", "y z"]
    emb = enc.encode(texts)
    assert emb.shape == (5, enc.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # Padding must not leak into the mean: one-at-a-time equals batched.
    single = np.stack([enc.encode([t])[0] for t in texts])
    np.testing.assert_allclose(single, emb, atol=1e-5)
    assert not np.allclose(emb[0], emb[1])


def test_build_index_through_ray_data(ray_cluster, tiny_bert, tmp_path):
    items = _catalog(tmp_path / "data")
    cfg = load_config(overrides={
        "run_dir": str(tmp_path), "model.backbone": tiny_bert,
        "retrieval.embed_batch_size": 8, "retrieval.embed_actors": 2,
    })
    out = build_index(cfg)
    assert out == cfg.index_dir
    meta = json.loads((tmp_path / "index" / "meta.json").read_text())
    assert meta["type"] == "flat" and meta["count"] == 40 and meta["encoder"] == tiny_bert
    idx = ItemIndex.load(out)
    np.testing.assert_array_equal(idx.item_idxs, items["item_idx"].to_numpy())
    assert idx.categories.tolist() == items["category"].tolist()
    # Same vectors as the in-process encoder: the Ray path neither reorders nor drops items.
    direct = TextEncoder(tiny_bert).encode(items["text"].tolist())
    np.testing.assert_allclose(idx.item_embeddings, direct, atol=1e-5)
    hits = idx.search(idx.item_embeddings[5], 3)
    assert hits[0][0] == 5 and abs(hits[0][1] - 1.0) < 1e-4
    q = history_query(idx, [1, 2, 3])
    assert idx.search(q, 4, exclude={1, 2, 3}, category="Drama")[0][0] % 4 == 1
    both = combined_query(idx, [1, 2, 3], "a horror movie", TextEncoder(tiny_bert), text_weight=0.5)
    np.testing.assert_allclose(np.linalg.norm(both), 1.0, rtol=1e-5)


def test_build_index_ivf_forced(ray_cluster, tiny_bert, tmp_path):
    _catalog(tmp_path / "data", n=120)
    cfg = load_config(overrides={
        "run_dir": str(tmp_path), "model.backbone": tiny_bert, "retrieval.index_type": "auto",
        "retrieval.exact_max_items": 50, "retrieval.embed_batch_size": 32,
    })
    idx = ItemIndex.load(build_index(cfg))
    assert idx.meta["type"] == "ivf" and idx.meta["nlist"] == 120 // 39
    assert len(idx.search(idx.item_embeddings[0], 10, category="Horror")) == 10
