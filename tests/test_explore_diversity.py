"""MMR and DPP re-ranking, alone and inside a policy."""

from __future__ import annotations

import numpy as np
from rayrec.explore.config import ExploreConfig
from rayrec.explore.diversity import dpp, mmr
from rayrec.explore.policies import make_policy
from rayrec.metrics import category_coverage, intra_list_diversity


def _clustered(seed: int = 0):
    """30 items in 3 tight clusters; relevance favours cluster 0."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 8)
    cat = np.repeat(np.arange(3), 10)
    emb = centres[cat] + 0.05 * rng.normal(size=(30, 8))
    rel = np.where(cat == 0, 1.0, 0.5) + 0.01 * rng.random(30)
    return rel, emb, cat


def test_mmr_full_relevance_weight_returns_relevance_order():
    rel, emb, _ = _clustered()
    assert np.array_equal(mmr(rel, emb, 10, diversity_weight=0.0), np.argsort(-rel)[:10])
    assert np.array_equal(dpp(rel, emb, 10, diversity_weight=0.0), np.argsort(-rel)[:10])


def test_mmr_and_dpp_return_valid_diverse_slates():
    rel, emb, cat = _clustered()
    top = np.argsort(-rel)[:6]
    for picked in (mmr(rel, emb, 6, 0.5), dpp(rel, emb, 6, 0.5)):
        assert len(picked) == 6 and len(set(picked.tolist())) == 6
        assert picked.min() >= 0 and picked.max() < 30
        assert intra_list_diversity(emb[picked]) > intra_list_diversity(emb[top]) + 0.3
        assert category_coverage(cat[picked].tolist(), 3) == 1.0
    assert category_coverage(cat[top].tolist(), 3) < 1.0
    # more items than embedding dimensions: DPP still fills the slate
    assert len(set(dpp(rel, emb, 20, 0.5).tolist())) == 20


def test_policy_with_dpp_keeps_exact_propensities():
    rel, emb, _ = _clustered()
    cfg = ExploreConfig(diversity="dpp", diversity_weight=0.5, temperature=0.2)
    pol = make_policy("softmax", cfg, seed=0)
    logits = np.log(rel / (1.5 - rel))
    slate = pol.select(logits[:8], 3, embeddings=emb[:8])
    again = pol.propensities(logits[:8], slate.indices, embeddings=emb[:8])
    assert np.allclose(slate.propensities, again)
    greedy = make_policy("greedy", cfg).select(logits, 6, embeddings=emb)
    assert intra_list_diversity(emb[greedy.indices]) > 0.5
