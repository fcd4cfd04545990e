"""Retrieval: FAISS item index, filters, persistence, queries, and build_index through Ray Data."""

from __future__ import annotations

import numpy as np
import pytest
from rayrec.retrieval.index import ItemIndex, choose_index_type
from rayrec.retrieval.query import combined_query, history_query


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _index(n=300, d=16, kind="flat", seed=0, n_cat=3):
    rng = np.random.default_rng(seed)
    emb = _unit(rng, n, d)
    ids = np.arange(n) + 1000  # ids deliberately not equal to row numbers
    cats = [f"c{i % n_cat}" for i in range(n)]
    return ItemIndex.from_embeddings(ids, emb, cats, index_type=kind, nprobe=8), emb, ids


def test_exact_index_returns_true_nearest_neighbours():
    idx, emb, ids = _index()
    q = _unit(np.random.default_rng(1), 5, emb.shape[1])
    results = idx.search(q, k=10)
    assert len(results) == 5
    for qi, hits in enumerate(results):
        truth = np.argsort(-(emb @ q[qi]))[:10]
        assert [h[0] for h in hits] == ids[truth].tolist()
        np.testing.assert_allclose([h[1] for h in hits], (emb @ q[qi])[truth], rtol=1e-5)
    one = idx.search(q[0], k=3)
    assert isinstance(one[0], tuple) and [h[0] for h in one] == [h[0] for h in results[0][:3]]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_vs_exact(kind):
    rng = np.random.default_rng(3)
    n, d, k = 4000, 32, 10
    # Clustered data, like real item embeddings, so that IVF partitions are meaningful.
    centres = _unit(rng, 40, d)
    emb = centres[rng.integers(0, 40, n)] + 0.08 * rng.normal(size=(n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    approx = ItemIndex.from_embeddings(np.arange(n), emb, ["x"] * n, index_type=kind, nprobe=16)
    exact = ItemIndex.from_embeddings(np.arange(n), emb, ["x"] * n, index_type="flat")
    q = emb[rng.choice(n, 50, replace=False)] + 0.1 * rng.normal(size=(50, d)).astype(np.float32)
    a, e = approx.search(q, k), exact.search(q, k)
    recall = np.mean([len({h[0] for h in x} & {h[0] for h in y}) / k for x, y in zip(a, e, strict=True)])
    assert recall >= 0.9, recall
    if kind == "ivf":
        assert approx.meta["nlist"] == min(int(4 * np.sqrt(n)), n // 39)


def test_exclude_and_category_filters():
    for kind in ("flat", "ivf"):
        idx, emb, ids = _index(n=2000, kind=kind)
        q = emb[7]
        top = [i for i, _ in idx.search(q, 20)]
        exclude = set(top[:15])
        hits = idx.search(q, 10, exclude=exclude)
        assert len(hits) == 10 and not exclude & {i for i, _ in hits}
        assert [i for i, _ in hits][:5] == top[15:20]
        cat = idx.search(q, 25, category="c1", exclude={1001, 1004})
        assert len(cat) == 25
        assert all(idx.categories[idx.rows([i])[0]] == "c1" for i, _ in cat)
        assert not {1001, 1004} & {i for i, _ in cat}
        rows = np.flatnonzero(idx.categories == "c1")
        truth = [int(ids[r]) for r in rows[np.argsort(-(emb[rows] @ q))] if ids[r] not in (1001, 1004)]
        if kind == "flat":
            assert [i for i, _ in cat] == truth[:25]


def test_filters_leaving_too_few_fall_back_to_exact():
    idx, emb, ids = _index(n=500, kind="ivf", n_cat=100)  # 5 items per category
    hits = idx.search(emb[0], 10, category="c3")
    assert sorted(i for i, _ in hits) == sorted(ids[3::100].tolist())  # all 5, none missed
    assert idx.search(emb[0], 5, category="nope") == []
    everything_but_two = set(ids[2:].tolist())
    assert sorted(i for i, _ in idx.search(emb[0], 5, exclude=everything_but_two)) == [1000, 1001]


def test_bad_queries_are_clear_errors():
    idx, emb, _ = _index(n=50)
    with pytest.raises(ValueError, match="shape"):
        idx.search(np.zeros(3, dtype=np.float32), 5)
    with pytest.raises(ValueError, match="k must be"):
        idx.search(emb[0], 0)
    with pytest.raises(FileNotFoundError, match="build_index"):
        ItemIndex.load("/nonexistent/index")


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(tmp_path, kind):
    idx, emb, ids = _index(n=1200, kind=kind)
    idx.save(tmp_path / "ix")
    back = ItemIndex.load(tmp_path / "ix")
    assert back.meta == idx.meta and back.meta["type"] == kind
    np.testing.assert_array_equal(back.item_idxs, ids)
    np.testing.assert_array_equal(back.item_embeddings, emb)
    assert back.categories.tolist() == idx.categories.tolist()
    q = emb[:4]
    assert back.search(q, 7, exclude={1000}) == idx.search(q, 7, exclude={1000})


def test_choose_index_type():
    assert choose_index_type(10, "auto", 100) == "flat"
    assert choose_index_type(1000, "auto", 100) == "ivf"
    assert choose_index_type(10, "hnsw", 100) == "hnsw"


def test_history_query_weights_recent_items():
    emb = np.eye(4, dtype=np.float32)
    idx = ItemIndex.from_embeddings(np.array([10, 11, 12, 13]), emb, ["a"] * 4)
    q = history_query(idx, [10, 11, 99], recency_decay=0.5)  # 99 unknown: skipped
    np.testing.assert_allclose(q, np.array([0.5, 1.0, 0, 0]) / np.sqrt(1.25), rtol=1e-6)
    assert idx.search(q, 1, exclude={10, 11})[0][0] in (12, 13)
    np.testing.assert_allclose(history_query(idx, [12], 0.9), emb[2])
    with pytest.raises(ValueError, match="no item known"):
        history_query(idx, [99])
    np.testing.assert_allclose(combined_query(idx, [10]), emb[0])
    with pytest.raises(ValueError, match="need a history"):
        combined_query(idx, [], None)
