"""Re-ranking diagnostics: the ranker and two baselines re-rank the same fixed candidate sets.

Not the headline (that is :mod:`rayrec.evaluation.fullcatalog`): a diagnostic of the ranker
alone. Protocol, per user of the held-out split (one example per user, the earliest):
  candidates  'sampled':    the held-out positive + the split's sampled negatives (examples/<split>),
                            shuffled deterministically (the stored order has the positive first);
              'retrieval':  the item index's top-N for the user's history (history items excluded),
                            the held-out item replacing the last one when retrieval missed it;
              'popularity': the N most popular unseen items, the held-out item inserted likewise.
  models      ranker (LoRA checkpoint, :mod:`rayrec.evaluation.scoring`),
              popularity (train positives), candidate_order (the order candidates arrive in).
  metrics     HR@K, NDCG@K, MRR, AUC per user (ties broken against the held-out item), averaged;
              intra-list diversity, catalog coverage and novelty of each model's top-K.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from rayrec import metrics as M
from rayrec import storage
from rayrec.data import store
from rayrec.evaluation import summary
from rayrec.evaluation.baselines import candidate_order_scores, popularity_scores, popularity_top
from rayrec.evaluation.scoring import TEXT_ONLY, EvalCase, resolve_checkpoint, score_cases
from rayrec.models.prior import popularity_prior
from rayrec.retrieval.encoder import TextEncoder
from rayrec.retrieval.index import META_FILE, ItemIndex, build_index
from rayrec.retrieval.query import history_query

MODELS = ("ranker", "popularity", "candidate_order")


# ---------------------------------------------------------------- data access


def load_eval_frames(data_dir: str, split: str) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Items (sorted by item_idx), the split's examples, and the number of users."""
    items = store.load_items(data_dir)
    examples = store.read_pandas(data_dir, "examples", split)
    n_users = len(store.load_users(data_dir))
    if len(examples) == 0:
        raise ValueError(f"no examples in split {split!r} under {data_dir}")
    idx = items["item_idx"].to_numpy()
    if not np.array_equal(idx, np.arange(len(items))):
        raise ValueError("items.parquet item_idx must be dense 0..n-1 (see rayrec.data.schema)")
    return items, examples, n_users


def select_users(examples: pd.DataFrame, max_users: int | None, seed: int) -> pd.DataFrame:
    """One example per user (the earliest held-out one); a seeded sample of max_users users."""
    ex = examples.sort_values(["user_idx", "timestamp"], kind="stable").drop_duplicates("user_idx")
    return summary.select_sample(ex, max_users, seed)


# ---------------------------------------------------------------- candidate sets


def sampled_cases(rows: pd.DataFrame, num_candidates: int, seed: int) -> list[EvalCase]:
    """Positive + stored negatives (first num_candidates), shuffled with a per-user seed."""
    cases = []
    for r in rows.itertuples(index=False):
        cands = np.asarray(r.candidates, dtype=np.int64)[:num_candidates]
        labels = np.asarray(r.labels, dtype=np.float64)[: len(cands)]
        if len(cands) < 2 or labels[0] <= 0 or (labels[1:] > 0).any():
            raise ValueError(f"user {r.user_idx}: examples must hold the positive first, then negatives")
        perm = np.random.default_rng([seed, int(r.user_idx)]).permutation(len(cands))
        cases.append(EvalCase(int(r.user_idx), list(map(int, r.history)), str(r.history_text),
                              cands[perm], int(cands[0])))
    return cases


def _insert_positive(ranked: list[int], positive: int, n: int) -> tuple[np.ndarray, bool]:
    if positive in ranked[:n]:
        return np.asarray(ranked[:n], dtype=np.int64), True
    return np.asarray(ranked[: n - 1] + [positive], dtype=np.int64), False


def retrieval_cases(rows: pd.DataFrame, index, num_candidates: int, recency_decay: float) -> list[EvalCase]:
    """The index's top-N for each user's history; the held-out item appended if it was missed."""
    cases = []
    for r in rows.itertuples(index=False):
        history, positive = list(map(int, r.history)), int(r.candidates[0])
        try:
            q = history_query(index, history, recency_decay)
            hits = [i for i, _ in index.search(q, num_candidates, exclude=set(history) - {positive})]
        except ValueError:  # empty history: nothing to query with
            hits = []
        cands, found = _insert_positive(hits, positive, num_candidates)
        cases.append(EvalCase(int(r.user_idx), history, str(r.history_text), cands, positive, found))
    return cases


def popularity_cases(rows: pd.DataFrame, popularity: np.ndarray, num_candidates: int) -> list[EvalCase]:
    """The N most popular items the user has not seen; the held-out item appended if missing."""
    cases = []
    for r in rows.itertuples(index=False):
        history, positive = list(map(int, r.history)), int(r.candidates[0])
        top = popularity_top(popularity, num_candidates, exclude=set(history) - {positive}).tolist()
        cands, found = _insert_positive(top, positive, num_candidates)
        cases.append(EvalCase(int(r.user_idx), history, str(r.history_text), cands, positive, found))
    return cases


def make_cases(cfg, rows: pd.DataFrame, popularity: np.ndarray) -> tuple[list[EvalCase], str]:
    """The candidate sets ``evaluate.candidates`` names, and what the report says they are."""
    ec = cfg.evaluate
    if ec.candidates == "sampled":
        return sampled_cases(rows, ec.num_candidates, ec.seed), (
            "the held-out positive + the split's sampled negatives (items the user never interacted "
            "with), shuffled deterministically per user; candidate_order = that random order")
    if ec.candidates == "retrieval":
        if not storage.is_file(storage.join(cfg.index_dir, META_FILE)):
            build_index(cfg)
        index = ItemIndex.load(cfg.index_dir)
        return retrieval_cases(rows, index, ec.num_candidates, cfg.retrieval.recency_decay), (
            f"retrieval top-{ec.num_candidates} from the item index ({index.meta.get('type')}, "
            f"{index.meta.get('encoder')}) for the recency-weighted history query, history items "
            "excluded; when retrieval missed the held-out item it replaces the last candidate; "
            "candidate_order = retrieval order")
    return popularity_cases(rows, popularity, ec.num_candidates), (
        f"the {ec.num_candidates} most popular unseen items; when the held-out item is missing it "
        "replaces the last candidate; candidate_order = popularity order")


# ---------------------------------------------------------------- metrics


def rank_list(candidates: np.ndarray, scores: np.ndarray, positive: int) -> np.ndarray:
    """Candidates best first; among equal scores the held-out positive goes last (pessimistic)."""
    is_pos = (np.asarray(candidates) == positive).astype(np.int64)
    return np.asarray(candidates)[np.lexsort((is_pos, -np.asarray(scores, dtype=np.float64)))]


def per_user_metrics(
    candidates: np.ndarray, scores: np.ndarray, positive: int, ks: list[int]
) -> dict[str, float]:
    """HR@K, NDCG@K, MRR, AUC and the 0-based rank of the positive for one user's list."""
    ranked = rank_list(candidates, scores, positive)
    labels = (np.asarray(candidates) == positive).astype(np.float64)
    row: dict[str, float] = {"rank": float(np.flatnonzero(ranked == positive)[0])}
    for k in ks:
        row[f"hr@{k}"] = M.hit_rate_at_k(ranked, positive, k)
        row[f"ndcg@{k}"] = M.ndcg_at_k(ranked, positive, k)
    row["mrr"] = M.reciprocal_rank(ranked, positive)
    row["auc"] = M.auc(scores, labels)
    return row


def beyond_accuracy(
    top_lists: list[np.ndarray], embeddings_of, popularity: np.ndarray, n_items: int, n_users: int
) -> dict[str, float]:
    """Mean intra-list diversity and novelty of the lists, and their catalog coverage."""
    return {
        "ild": float(np.mean([M.intra_list_diversity(embeddings_of(t)) for t in top_lists])),
        "coverage": M.catalog_coverage(top_lists, n_items),
        "novelty": float(np.mean([M.novelty(t, popularity, n_users) for t in top_lists])),
    }


def _embedding_lookup(cfg, items: pd.DataFrame, needed: np.ndarray):
    """Item embeddings for diversity: from the saved index when present, else encode what is needed."""
    encoder = cfg.retrieval.encoder or cfg.model.backbone
    try:
        index = ItemIndex.load(cfg.index_dir)
    except FileNotFoundError:
        index = None
    if index is not None and all(index.has(int(i)) for i in needed):
        return index.embeddings_for, f"item index at {cfg.index_dir} ({index.meta.get('encoder')})"
    emb = TextEncoder(encoder).encode(items["text"].to_numpy()[needed].tolist())
    row = {int(i): r for r, i in enumerate(needed)}
    return (lambda ids: emb[[row[int(i)] for i in ids]]), f"TextEncoder({encoder}) on the listed items"


def per_user_rows(cases: list[EvalCase], models: tuple[str, ...], ks: list[int], beyond_k: int
                  ) -> tuple[pd.DataFrame, dict[str, list[np.ndarray]]]:
    """One row per (user, model) and each model's top-``beyond_k`` lists."""
    rows, top_lists = [], {m: [] for m in models}
    for c in cases:
        for m in models:
            row = per_user_metrics(c.candidates, c.scores[m], c.positive, ks)
            rows.append({"user_idx": c.user_idx, "model": m, "n_candidates": len(c.candidates),
                         "retrieved": c.retrieved, **row})
            top_lists[m].append(rank_list(c.candidates, c.scores[m], c.positive)[:beyond_k])
    return pd.DataFrame(rows), top_lists


# ---------------------------------------------------------------- the protocol


def run_sampled(cfg) -> dict[str, Any]:
    """The ranker vs popularity vs candidate order on ``evaluate.candidates`` (sampled,
    retrieval or popularity candidate sets); writes the report to ``cfg.eval_dir``."""
    t0 = time.time()
    ec, ks = cfg.evaluate, sorted(set(cfg.evaluate.ks))
    items, examples, n_users = load_eval_frames(cfg.data_dir, ec.split)
    rows = select_users(examples, ec.max_users, ec.seed)
    popularity = items["popularity"].to_numpy(dtype=np.float64)
    checkpoint = resolve_checkpoint(cfg)
    cases, cand_desc = make_cases(cfg, rows, popularity)

    t_score = time.time()
    item_prior = popularity_prior(popularity) if cfg.model.popularity_prior else None
    scoring = score_cases(cfg, cases, items["text"].astype(str).to_numpy(), checkpoint, item_prior)
    score_seconds = time.time() - t_score
    models = MODELS + ((TEXT_ONLY,) if TEXT_ONLY in cases[0].scores else ())
    for c in cases:
        c.scores["popularity"] = popularity_scores(c.candidates, popularity)
        c.scores["candidate_order"] = candidate_order_scores(c.candidates)

    per_user, top_lists = per_user_rows(cases, models, ks, ec.beyond_k)
    means = summary.means_by_model(per_user, models, [f"{p}@{k}" for k in ks for p in ("hr", "ndcg")] + ["mrr", "auc"])
    embeddings_of, emb_source = _embedding_lookup(
        cfg, items, np.unique(np.concatenate([t for m in models for t in top_lists[m]])))
    for m in models:
        ba = beyond_accuracy(top_lists[m], embeddings_of, popularity, len(items), n_users)
        means[m] |= {f"{k}@{ec.beyond_k}": v for k, v in ba.items()}
    comparisons = summary.compare(per_user, [("ranker", "popularity"), ("ranker", "candidate_order")],
                          summary.headline_metric(ks), ec)

    n_cands = per_user[per_user["model"] == "ranker"]["n_candidates"]
    protocol = {
        "data_dir": cfg.data_dir, "split": ec.split, "users": len(cases),
        "users_in_split": int(examples["user_idx"].nunique()),
        "user_selection": summary.user_selection(len(cases), examples["user_idx"].nunique(), ec),
        "example_per_user": "the earliest held-out example of each user",
        "candidates": ec.candidates, "candidates_description": cand_desc,
        "candidates_per_user": {"min": int(n_cands.min()), "max": int(n_cands.max()),
                                "mean": float(n_cands.mean())},
        "negatives_per_user": float(n_cands.mean() - 1),
        "task": "re-ranking of the candidate set (not full-catalog ranking)",
        "ties": "broken against the held-out item (pessimistic)",
        "models": {
            "ranker": f"{cfg.model.kind} on {cfg.model.backbone}, checkpoint "
                      f"{checkpoint or 'NONE (untuned backbone + fresh LoRA)'}"
                      + (", text score + learned weight x popularity prior (rayrec.models.prior)"
                         if item_prior is not None else ""),
            "popularity": "positives per item in the train split (items.parquet popularity)",
            "candidate_order": "the order candidates arrive in (see candidates_description)",
            **({TEXT_ONLY: "ablation: the ranker's text score alone (its popularity prior removed)"}
               if TEXT_ONLY in models else {}),
        },
        "ranker_scoring": scoring,
        "ks": ks,
        "beyond_accuracy": (f"top-{ec.beyond_k} of each model; diversity = mean pairwise cosine "
                            f"distance of item embeddings from {emb_source}; coverage = distinct "
                            f"items / catalog size ({len(items)}); novelty = mean -log2(popularity / "
                            f"{n_users} users)"),
        "seed": ec.seed,
    }
    if ec.candidates != "sampled":
        protocol["positive_found_by_generator"] = float(np.mean([c.retrieved for c in cases]))
    return summary.finish(cfg, protocol, means, comparisons, per_user, t0, {"ranker_seconds": score_seconds})
