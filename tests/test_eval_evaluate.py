"""Offline evaluation: per-user metrics by hand, baselines, report files, a full tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rayrec.config import load_config
from rayrec.evaluation.baselines import candidate_order_scores, popularity_scores, popularity_top
from rayrec.evaluation.bootstrap import paired_bootstrap
from rayrec.evaluation.evaluate import run_evaluation
from rayrec.evaluation.sampled import (
    per_user_metrics,
    popularity_cases,
    rank_list,
    sampled_cases,
    select_users,
)
from rayrec.models.prior import candidate_priors, popularity_prior
from rayrec.models.tiny import make_tiny_backbone

N_ITEMS, N_USERS, N_NEG = 40, 12, 7
CATS = ["Comedy", "Drama", "Horror", "Sci-Fi"]


def write_tiny_dataset(data_dir: Path, seed: int = 0) -> pd.DataFrame:
    """A preprocessed dataset per rayrec.data.schema: items, users, histories, test examples."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({
        "item_idx": np.arange(N_ITEMS, dtype=np.int64),
        "item_id": [str(100 + i) for i in range(N_ITEMS)],
        "title": [f"Film {i}" for i in range(N_ITEMS)],
        "category": [CATS[i % 4] for i in range(N_ITEMS)],
        "text": [f"Film {i} | Genres: {CATS[i % 4]}" for i in range(N_ITEMS)],
        "popularity": rng.integers(0, 30, N_ITEMS).astype(np.int64),
    })
    data_dir.mkdir(parents=True, exist_ok=True)
    items.to_parquet(data_dir / "items.parquet", index=False)
    pd.DataFrame({"user_idx": np.arange(N_USERS, dtype=np.int64),
                  "user_id": [f"u{u}" for u in range(N_USERS)],
                  "n_train": np.full(N_USERS, 5, dtype=np.int64)}).to_parquet(
        data_dir / "users.parquet", index=False)
    rows = []
    for u in range(N_USERS):
        perm = rng.permutation(N_ITEMS)
        history, pos, negs = perm[:5].tolist(), int(perm[5]), perm[6 : 6 + N_NEG].tolist()
        cands = [pos, *negs]
        rows.append({
            "user_idx": u, "history": history,
            "history_text": "; ".join(items.text[h] for h in history),
            "candidates": cands, "labels": [1.0] + [0.0] * N_NEG,
            "candidate_texts": [items.text[c] for c in cands], "timestamp": 1000 + u,
        })
    ex = pd.DataFrame(rows)
    (data_dir / "examples" / "test").mkdir(parents=True)
    ex.to_parquet(data_dir / "examples" / "test" / "part-0.parquet", index=False)
    return ex


# ---------------------------------------------------------------- per-user metrics by hand


def test_per_user_metrics_match_hand_computation():
    cands = np.array([7, 3, 9, 4, 5])  # positive is 9, ranked third by these scores
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.2])
    m = per_user_metrics(cands, scores, positive=9, ks=[1, 2, 3, 5])
    assert m["rank"] == 2
    assert m["hr@1"] == 0 and m["hr@2"] == 0 and m["hr@3"] == 1 and m["hr@5"] == 1
    assert m["ndcg@2"] == 0 and m["ndcg@3"] == pytest.approx(1 / math.log2(4))
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["auc"] == pytest.approx(2 / 4)  # beats 4 and 5, loses to 7 and 3


def test_ties_are_broken_against_the_positive():
    cands = np.array([1, 2, 3, 4])
    scores = np.array([1.0, 1.0, 1.0, 0.0])
    assert rank_list(cands, scores, positive=1).tolist() == [2, 3, 1, 4]
    m = per_user_metrics(cands, scores, positive=1, ks=[1, 3])
    assert m["rank"] == 2 and m["hr@1"] == 0 and m["hr@3"] == 1
    assert m["auc"] == pytest.approx((1 + 0.5 * 2) / 3)  # ties count half


def test_popularity_baseline_orders_by_count():
    pop = np.array([5, 50, 0, 20, 20])
    cands = np.array([0, 2, 3, 1, 4])
    ranked = rank_list(cands, popularity_scores(cands, pop), positive=0)
    assert ranked.tolist()[:2] == [1, 3] or ranked.tolist()[:2] == [1, 4]
    assert ranked.tolist()[-2:] == [0, 2]
    assert popularity_top(pop, 3).tolist() == [1, 3, 4]
    assert popularity_top(pop, 3, exclude={1}).tolist() == [3, 4, 0]


def test_candidate_order_baseline_keeps_arrival_order():
    cands = np.array([11, 12, 13])
    assert rank_list(cands, candidate_order_scores(cands), positive=13).tolist() == [11, 12, 13]


def test_sampled_candidates_shuffled_deterministically(tmp_path):
    ex = write_tiny_dataset(tmp_path)
    rows = select_users(ex, max_users=None, seed=0)
    a, b = sampled_cases(rows, 100, seed=0), sampled_cases(rows, 100, seed=0)
    assert [c.candidates.tolist() for c in a] == [c.candidates.tolist() for c in b]
    first_pos = [int(np.flatnonzero(c.candidates == c.positive)[0]) for c in a]
    assert len(set(first_pos)) > 1  # the positive is not always first any more
    for c, r in zip(a, rows.itertuples(), strict=True):
        assert sorted(c.candidates.tolist()) == sorted(r.candidates) and c.positive == r.candidates[0]
    short = sampled_cases(rows, 4, seed=0)
    assert all(len(c.candidates) == 4 and c.positive in c.candidates for c in short)
    assert len(select_users(ex, max_users=5, seed=1)) == 5


def test_popularity_candidates_insert_the_missed_positive(tmp_path):
    ex = write_tiny_dataset(tmp_path)
    pop = pd.read_parquet(tmp_path / "items.parquet")["popularity"].to_numpy()
    for c in popularity_cases(select_users(ex, None, 0), pop, 5):
        assert len(c.candidates) == 5 and c.positive in c.candidates
        assert not set(c.candidates.tolist()) & (set(c.history) - {c.positive})
        expected = popularity_top(pop, 5, exclude=set(c.history) - {c.positive}).tolist()
        if c.retrieved:
            assert c.candidates.tolist() == expected
        else:  # the generator missed it: it replaces the last candidate
            assert c.candidates.tolist() == expected[:4] + [c.positive]


def test_paired_bootstrap():
    a, b = np.array([1.0, 0.5, 0.0, 1.0]), np.array([0.0, 0.5, 0.5, 0.0])
    out = paired_bootstrap(a, b, n_boot=200, seed=0)
    assert out["delta"] == pytest.approx(0.375) and out["wins"] == 2 and out["losses"] == 1
    assert out["ci95"][0] <= 0.375 <= out["ci95"][1]


# ---------------------------------------------------------------- full runs


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return make_tiny_backbone("bert", tmp_path_factory.mktemp("tiny_bert"))


def _cfg(tmp_path, tiny_bert, **over):
    base = {"run_dir": str(tmp_path), "model.backbone": tiny_bert, "evaluate.require_checkpoint": False,
            "evaluate.candidates": "sampled",  # these tests cover the re-ranking diagnostics
            "evaluate.ks": [1, 3, 5], "evaluate.beyond_k": 3, "evaluate.bootstrap": 50,
            "model.lora.target_modules": ["query", "value"]}
    return load_config(overrides={**base, **over})


def test_run_evaluation_sampled_in_process(tmp_path, tiny_bert):
    write_tiny_dataset(tmp_path / "data")
    cfg = _cfg(tmp_path, tiny_bert, **{"evaluate.scoring": "local", "evaluate.max_users": 10})
    res = run_evaluation(cfg)
    p = res["protocol"]
    assert p["users"] == 10 and p["candidates"] == "sampled" and p["negatives_per_user"] == N_NEG
    assert "re-ranking" in p["task"] and "NONE" in p["models"]["ranker"]
    assert "positive_found_by_generator" not in p
    assert set(res["models"]) == {"ranker", "popularity", "candidate_order", "ranker_text_only"}
    # Summary = mean of the per-user rows, and the per-user rows are recomputable by hand.
    per_user = pd.read_parquet(res["files"]["per_user"])
    assert len(per_user) == 40  # 10 users x 4 models
    for model, m in res["models"].items():
        sub = per_user[per_user.model == model]
        assert m["ndcg@5"] == pytest.approx(sub["ndcg@5"].mean())
        assert m["mrr"] == pytest.approx((1.0 / (sub["rank"] + 1)).mean())
        assert 0 <= m["coverage@3"] <= 1 and m["novelty@3"] > 0 and 0 <= m["ild@3"] <= 2
    ex = pd.read_parquet(tmp_path / "data" / "examples" / "test")
    pop = pd.read_parquet(tmp_path / "data" / "items.parquet")["popularity"].to_numpy()
    for r in per_user[per_user.model == "popularity"].itertuples():
        cands = np.asarray(ex.set_index("user_idx").loc[r.user_idx, "candidates"])
        p_pos = pop[cands[0]]
        assert r.rank == (pop[cands] >= p_pos).sum() - 1  # pessimistic ties
    # Report files, with the protocol stated.
    out = Path(cfg.eval_dir)
    md = (out / "eval.md").read_text()
    for needle in ("split", "test", "sampled", "re-ranking", "negatives_per_user", "| ranker |",
                   "| popularity |", "| candidate_order |", "shuffled deterministically"):
        assert needle in md, needle
    saved = json.loads((out / "eval.json").read_text())
    assert saved["protocol"]["users"] == 10 and saved["models"]["ranker"]["hr@5"] == res["models"]["ranker"]["hr@5"]
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_evaluation_requires_checkpoint_by_default(tmp_path, tiny_bert):
    write_tiny_dataset(tmp_path / "data")
    cfg = _cfg(tmp_path, tiny_bert, **{"evaluate.require_checkpoint": True})
    with pytest.raises(FileNotFoundError, match="require_checkpoint"):
        run_evaluation(cfg)


@pytest.mark.slow
def test_run_evaluation_retrieval_through_ray(ray_cluster, tmp_path, tiny_bert):
    write_tiny_dataset(tmp_path / "data")
    cfg = _cfg(tmp_path, tiny_bert, **{
        "evaluate.scoring": "ray", "evaluate.candidates": "retrieval", "evaluate.num_candidates": 6,
        "evaluate.score_batch_size": 4, "evaluate.scoring_actors": 2, "retrieval.embed_batch_size": 16,
    })
    res = run_evaluation(cfg)
    p = res["protocol"]
    assert p["users"] == N_USERS and p["candidates_per_user"] == {"min": 6, "max": 6, "mean": 6.0}
    assert "Ray Data" in p["ranker_scoring"] and (Path(cfg.index_dir) / "meta.json").is_file()
    assert 0 <= p["positive_found_by_generator"] <= 1
    per_user = pd.read_parquet(res["files"]["per_user"])
    # Users whose positive retrieval missed got it as the last candidate: candidate order ranks it last.
    missed = per_user[(per_user.model == "candidate_order") & ~per_user.retrieved]
    assert (missed["rank"] == 5).all()
    assert res["models"]["ranker"]["auc"] == pytest.approx(
        per_user[per_user.model == "ranker"]["auc"].mean())


def test_run_evaluation_uses_latest_checkpoint(tmp_path, tiny_bert):
    import torch
    from rayrec.models.ranker import build_ranker, load_ranker, save_ranker
    from rayrec.raytrain.checkpoint import write_manifest

    write_tiny_dataset(tmp_path / "data")
    cfg = _cfg(tmp_path, tiny_bert, **{"evaluate.require_checkpoint": True, "evaluate.scoring": "local"})
    model, collator = build_ranker(cfg.model, seed=3)
    with torch.no_grad():  # a head unlike a fresh one, so that loading it visibly matters
        for p in model.head.parameters():
            p.add_(torch.randn_like(p))
    for step in (1, 7):
        save_ranker(Path(cfg.checkpoint_dir) / f"step_{step:08d}" / "model", cfg.model, model, collator)
        write_manifest(str(Path(cfg.checkpoint_dir) / f"step_{step:08d}"))
    res = run_evaluation(cfg)
    assert "step_00000007" in res["protocol"]["models"]["ranker"]
    # The evaluation's ranker metrics are those of this checkpoint's scores.
    ranker = load_ranker(cfg.model, str(Path(cfg.checkpoint_dir) / "step_00000007"))
    ex = pd.read_parquet(tmp_path / "data" / "examples" / "test").sort_values("user_idx")
    items = pd.read_parquet(tmp_path / "data" / "items.parquet")
    prior = popularity_prior(items.sort_values("item_idx").popularity.to_numpy())
    scores = ranker.score(ex.history_text.tolist(), [items.text[list(c)].tolist() for c in ex.candidates],
                          candidate_priors(prior, ex.candidates))
    ranks = [int((s > s[0]).sum() + (s == s[0]).sum() - 1) for s in scores]
    got = pd.read_parquet(res["files"]["per_user"]).query("model == 'ranker'").sort_values("user_idx")
    assert got["rank"].astype(int).tolist() == ranks
    # The ablation is the same scores without the prior term.
    text_only = ranker.score(ex.history_text.tolist(), [items.text[list(c)].tolist() for c in ex.candidates])
    ranks = [int((s > s[0]).sum() + (s == s[0]).sum() - 1) for s in text_only]
    got = pd.read_parquet(res["files"]["per_user"]).query("model == 'ranker_text_only'").sort_values("user_idx")
    assert got["rank"].astype(int).tolist() == ranks


def test_scoring_that_cannot_be_scheduled_fails_at_once(ray_cluster):
    """Scoring actors the cluster can never hold: a clear error naming the fields, not a wait."""
    from rayrec.config import load_config
    from rayrec.errors import ClusterResourceError
    from rayrec.evaluation.scoring import scoring_on_ray

    cfg = load_config(None, {"evaluate.scoring": "ray", "evaluate.scoring_actors": 3, "evaluate.scoring_cpus": 2})
    with pytest.raises(ClusterResourceError, match=r"evaluate.scoring_actors=3 x evaluate.scoring_cpus=2"):
        scoring_on_ray(cfg, 10)
    local = load_config(None, {"evaluate.scoring": "auto", "evaluate.local_max_users": 50})
    assert scoring_on_ray(local, 10) is False
