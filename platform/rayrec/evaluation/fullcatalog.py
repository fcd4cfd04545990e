"""Full-catalog evaluation: what each system would show, ranked against everything unseen.

Protocol, for every user of the split (the reference protocol of ../shared/README.md):
  input      everything the user interacted with before the held-out item (test: train +
             validation item), in time order; those items are excluded from every list
  systems    popularity   train-split counts
             als          implicit ALS, factors/regularization/alpha tuned on validation
             text_retrieval  today's text path: recency-weighted MiniLM history query in FAISS
             retriever    the sequential retriever's top-K (its FAISS index)
             retriever_ranker  the retriever's top-N re-scored by the LoRA ranker, top-K of that
                          (text_retrieval_ranker when no sequential retriever is trained)
             generative   evaluate.generative: a causal LM names k catalog titles (trie-
                          constrained beam search, rayrec.generative), zero-shot or tuned
             oracle       synthetic data only: the world's true next-click probability
  a miss     a held-out item that a system did not put in its list scores 0: nothing is
             inserted, so a retrieval miss is a ranking miss
  metrics    HR@K, NDCG@K, MRR within the list, per user, averaged; paired bootstrap 95% CIs
             of the NDCG@10 differences; recall@N of retrieval (held-out item reaches the ranker)

Every system reads the same users and the same exclusions; each is timed per user.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from rayrec import storage
from rayrec.evaluation import metrics as M
from rayrec.evaluation.baselines import popularity_top

log = logging.getLogger(__name__)

BASELINES = ("popularity", "als")


def select_users(frame: pd.DataFrame, max_users: int | None, seed: int) -> pd.DataFrame:
    """All users, or a seeded sample of max_users of them (kept in user order)."""
    if max_users is not None and len(frame) > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=max_users, replace=False))
        frame = frame.iloc[keep]
    return frame.reset_index(drop=True)


def list_metrics(ranked: np.ndarray, target: int, ks: list[int]) -> dict[str, float]:
    """HR@K, NDCG@K and reciprocal rank of ``target`` in one top list (0 when absent)."""
    row = {f"hr@{k}": M.hit_rate_at_k(ranked, target, k) for k in ks}
    row |= {f"ndcg@{k}": M.ndcg_at_k(ranked, target, k) for k in ks}
    row["mrr"] = M.reciprocal_rank(ranked, target)
    return row


def popularity_lists(popularity: np.ndarray, histories: list[np.ndarray], n: int) -> list[np.ndarray]:
    return [popularity_top(popularity, n, exclude=set(h.tolist())) for h in histories]


def als_lists(cfg, everyone: pd.DataFrame, users: pd.DataFrame, n_items: int, n: int
              ) -> tuple[list[np.ndarray], dict]:
    """ALS tuned on validation (fit on train), then refit on every user's evaluation input."""
    from rayrec.evaluation.als import AlsBaseline
    from rayrec.seqrec.data import load_sequences

    valid = load_sequences(cfg.data_dir, "valid")
    ec = cfg.evaluate
    als = AlsBaseline(n_items, seed=ec.seed if ec.system_seed is None else ec.system_seed)
    tuned = als.tune(valid["user_idx"].tolist(), valid["history"].tolist(), valid["target"].tolist())
    # Refit on every user's interactions before the evaluated items: the evaluated users' inputs,
    # and for the others (the new-item protocol evaluates only some users) train + valid.
    fit = dict(zip(valid["user_idx"], [np.append(h, t) for h, t in zip(valid["history"], valid["target"],
                                                                       strict=True)], strict=True))
    fit |= dict(zip(everyone["user_idx"], everyone["history"], strict=True))
    als.fit(list(fit), list(fit.values()))
    return als.topn(users["user_idx"].tolist(), n), tuned


def text_retrieval_lists(cfg, histories: list[np.ndarray], n: int) -> list[np.ndarray]:
    """The text index's top-n for the recency-weighted query of the newest history items."""
    from rayrec.retrieval.index import ItemIndex
    from rayrec.retrieval.query import history_query

    index = ItemIndex.load(cfg.index_dir)
    out = []
    for h in histories:
        recent = h[-cfg.model.max_history_items * 2 :]  # decay makes older items negligible
        try:
            q = history_query(index, recent.tolist(), cfg.retrieval.recency_decay)
        except ValueError:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        out.append(np.asarray([i for i, _ in index.search(q, n, exclude=set(h.tolist()))], dtype=np.int64))
    return out


def oracle_lists(cfg, users: pd.DataFrame, items: pd.DataFrame, n: int) -> list[np.ndarray] | None:
    """Synthetic data only: the world's true next-click probability given the user and their
    last item (:meth:`SyntheticWorld.next_item_probability`), the best any system can rank.
    None when the data has no world ground truth."""
    from rayrec.data.store import load_users
    from rayrec.data.world import saved_world

    world = saved_world(cfg.data_dir)
    if world is None:
        return None
    world_item = items["item_id"].astype(int).to_numpy()  # item_idx -> the world's item id
    raw_user = load_users(cfg.data_dir).set_index("user_idx")["user_id"].astype(int)
    out = []
    for u, h in zip(users["user_idx"], users["history"], strict=True):
        p = world.next_item_probability(int(raw_user[u]), int(world_item[h[-1]]))[world_item].copy()
        p[h] = -1.0  # seen items are excluded, as for every system
        out.append(np.argsort(-p, kind="stable")[:n].astype(np.int64))
    return out


def generative_lists(cfg, histories: list[np.ndarray], items: pd.DataFrame) -> tuple[list[np.ndarray], dict]:
    """The generator's k items per user (catalog-constrained beam search, seen items banned)
    and its latency per request and per decoding step."""
    from rayrec.generative.adapter import resolve_adapter
    from rayrec.generative.lists import Generator

    gc = cfg.evaluate.generative
    adapter = resolve_adapter(cfg, gc.adapter, gc.backbone, gc.history_items)
    gen = Generator.load(gc.backbone, items["title"].astype(str).to_numpy(), adapter)
    beams = max(gc.beams, gc.k)
    lists = gen.lists(histories, gc.k, beams=beams, history_items=gc.history_items)
    return lists, {"beams": beams, **gen.latency(), "adapter": adapter}


def load_seq_retriever(cfg):
    """The trained retriever with its FAISS index (the endpoint's history path)."""
    from rayrec.retrieval.index import ItemIndex
    from rayrec.seqrec.scorer import SeqRetriever

    return SeqRetriever(cfg.retriever_model_dir, ItemIndex.load(cfg.retriever_index_dir))


def ranker_lists(cfg, users: pd.DataFrame, retrieved: list[tuple[np.ndarray, np.ndarray]],
                 items: pd.DataFrame, checkpoint: str | None) -> list[np.ndarray]:
    """Re-score each user's retrieved candidates with the ranker (the one scoring path)."""
    from rayrec.data.text import render_history
    from rayrec.evaluation.evaluate import EvalCase, score_cases_with_ranker, scoring_on_ray
    from rayrec.models.prior import popularity_prior

    ec = cfg.evaluate
    texts = items["text"].astype(str).to_numpy()
    cases = []
    for (u, h, y), (cands, scores) in zip(users[["user_idx", "history", "target"]].itertuples(index=False),
                                          retrieved, strict=True):
        recent = texts[h[-cfg.model.max_history_items :]].tolist()
        cases.append(EvalCase(int(u), h.tolist(), render_history(recent), cands, int(y),
                              retrieval_scores=scores))
    use_ray = scoring_on_ray(cfg, len(cases))
    prior = popularity_prior(items["popularity"].to_numpy()) if cfg.model.popularity_prior else None
    score_cases_with_ranker(cases, texts, cfg.model, checkpoint, use_ray, ec.scoring_actors,
                            ec.score_batch_size, ec.scoring_cpus, prior)
    return [c.candidates[np.argsort(-c.scores["ranker"], kind="stable")] for c in cases]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_full_catalog(cfg, retrievers: dict[str, Any] | None = None, held_out: np.ndarray | None = None,
                     describe: dict[str, str] | None = None, pairs: list[tuple[str, str]] = (),
                     protocol_notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate every available system on the full catalog; write the report to cfg.eval_dir.

    ``retrievers``: name -> a loaded SeqRetriever to evaluate (default: the run's, as
    "retriever"; the first is what the ranker re-scores). ``held_out``: the new-item protocol's
    held-out items (rayrec.data.newitems): each list's share of them in its top-K is reported.
    ``describe`` / ``pairs``: what the report says each extra system is, and extra paired
    comparisons (a, b) of NDCG@10; ``protocol_notes``: added to the report's protocol section."""
    from rayrec.data.store import load_items
    from rayrec.evaluation.evaluate import paired_bootstrap, resolve_checkpoint
    from rayrec.evaluation.report import track_evaluation, write_report
    from rayrec.retrieval.index import META_FILE
    from rayrec.seqrec.data import load_sequences

    t0 = time.time()
    ec = cfg.evaluate
    ks = sorted(set(ec.ks))
    items = load_items(cfg.data_dir)
    popularity = items["popularity"].to_numpy(dtype=np.float64)
    all_users = load_sequences(cfg.data_dir, ec.split)
    if all_users.empty:
        raise ValueError(f"no users with a held-out {ec.split} item under {cfg.data_dir}")
    users = select_users(all_users, ec.max_users, ec.seed)
    histories = users["history"].tolist()
    depth = max(max(ks), ec.rank_depth)  # every list long enough for K and for the ranker
    lists, seconds, notes = {}, {}, {}
    if ec.baselines:
        lists["popularity"], seconds["popularity"] = _timed(lambda: popularity_lists(popularity, histories, depth))
        (lists["als"], notes["als"]), seconds["als"] = _timed(
            lambda: als_lists(cfg, all_users, users, len(items), depth))
    retrieved, source = {}, None  # name -> (items, scores) per user: what a ranker re-scores
    if retrievers is None:
        retrievers = {"retriever": load_seq_retriever(cfg)} if storage.is_dir(cfg.retriever_model_dir) else {}
    for name, retriever in retrievers.items():
        retrieved[name], seconds[name] = _timed(lambda r=retriever: r.retrieve(histories, depth))
        lists[name] = [r[0] for r in retrieved[name]]
        source = source or name
    if storage.is_file(storage.join(cfg.index_dir, META_FILE)) and (ec.baselines or not retrieved):
        lists["text_retrieval"], seconds["text_retrieval"] = _timed(
            lambda: text_retrieval_lists(cfg, histories, depth))
        if not retrieved:  # no sequential retriever: the text index is the retrieval stage
            retrieved, source = {"text_retrieval": [(t, None) for t in lists["text_retrieval"]]}, "text_retrieval"
    if ec.generative.enabled:
        (lists["generative"], notes["generative"]), seconds["generative"] = _timed(
            lambda: generative_lists(cfg, histories, items))
    checkpoint = resolve_checkpoint(cfg, required=False) if ec.rank_retrieved else None
    for base, found in retrieved.items() if checkpoint is not None else ():  # each retriever + the ranker
        top_n = [(c[: ec.rank_depth], None if s is None else s[: ec.rank_depth]) for c, s in found]
        name = f"{base}_ranker"
        lists[name], seconds[name] = _timed(lambda t=top_n: ranker_lists(cfg, users, t, items, checkpoint))
    if ec.baselines:
        oracle, t_oracle = _timed(lambda: oracle_lists(cfg, users, items, depth))
        if oracle is not None:
            lists["oracle"], seconds["oracle"] = oracle, t_oracle
    models = list(lists)

    rows = []
    for m in models:
        for (u, y), top in zip(users[["user_idx", "target"]].itertuples(index=False), lists[m], strict=True):
            row = {"user_idx": int(u), "model": m, **list_metrics(top, int(y), ks),
                   f"recall@{ec.rank_depth}": float(int(y) in top[: ec.rank_depth]),
                   "top": top[: max(ks)].tolist()}  # what the system would show
            if held_out is not None:  # the share of the top-K slots given to new items
                row[f"new_share@{ec.beyond_k}"] = float(np.isin(top[: ec.beyond_k], held_out).sum()) / ec.beyond_k
            rows.append(row)
    per_user = pd.DataFrame(rows)
    summary = {}
    for m in models:
        sub = per_user[per_user["model"] == m]
        summary[m] = {c: float(sub[c].mean()) for c in per_user.columns if c not in ("user_idx", "model", "top")}
        summary[m]["ms_per_user"] = 1000 * seconds[m] / len(users)
        summary[m] |= {f"{k}@{ec.beyond_k}": v for k, v in coverage_novelty(lists[m], ec.beyond_k, popularity,
                                                                     len(items), len(all_users)).items()}
    main = f"ndcg@{10 if 10 in ks else ks[-1]}"
    ndcg = {m: per_user[per_user["model"] == m].sort_values("user_idx")[main].to_numpy() for m in models}
    compared = [(m, b) for m in models if m not in (*BASELINES, "oracle") for b in BASELINES if b in models]
    compared += [(m, m.removesuffix("_ranker")) for m in models if m.endswith("_ranker")]
    compared += [(a, b) for a, b in pairs if a in models and b in models]
    comparisons = {f"{a}_vs_{b}": {"metric": main, **paired_bootstrap(ndcg[a], ndcg[b], ec.bootstrap, ec.seed)}
                   for a, b in compared}
    protocol = {
        "data_dir": cfg.data_dir, "split": ec.split, "users": len(users),
        "users_in_split": len(all_users),
        "user_selection": ("all users of the split" if len(users) == len(all_users)
                           else f"seeded sample (seed {ec.seed}) of max_users={ec.max_users}"),
        "candidates": "full", "task": "full-catalog ranking (not re-ranking of sampled candidates)",
        "candidates_description": (
            f"every catalog item ({len(items)}) the user has not interacted with before the held-out "
            "item; a held-out item missing from a system's list is a miss (nothing inserted)"),
        "candidates_per_user": {"mean": float(len(items) - np.mean([len(set(h.tolist())) for h in histories]))},
        "ranker_depth": f"the ranker re-scores the {source}'s top-{ec.rank_depth}",
        "models": {
            "popularity": "train-split interaction counts",
            "als": f"implicit ALS tuned on validation NDCG@10: {notes.get('als')}",
            "text_retrieval": "MiniLM item-text embeddings, recency-weighted history query (FAISS)",
            "oracle": "synthetic world's true next-click probability (the best possible ranking)",
            "retriever": f"sequential retriever (SASRec) at {cfg.retriever_model_dir}",
            "generative": (f"{ec.generative.backbone} "
                           f"{'+ adapter ' + ec.generative.adapter if ec.generative.adapter else 'zero-shot'}"
                           f" ({ec.generative.history_items} titles per prompt)"
                           f" generating {ec.generative.k} catalog titles (trie-constrained beam search); "
                           f"beams and latency {notes.get('generative')}"),
            **{f"{b}_ranker": f"{b} top-{ec.rank_depth} re-scored by {cfg.model.kind} on "
                              f"{cfg.model.backbone}, checkpoint {checkpoint}" for b in retrieved},
        },
        "ks": ks, "seed": ec.seed,
    }
    protocol |= protocol_notes or {}
    protocol["models"] |= describe or {}
    protocol["models"] = {m: d for m, d in protocol["models"].items() if m in models}
    result = {"protocol": protocol, "models": summary, "comparisons": comparisons,
              "timing": {"total_seconds": round(time.time() - t0, 2),
                         **{f"{m}_seconds": round(s, 2) for m, s in seconds.items()}}}
    result["files"] = write_report(result, per_user, cfg.eval_dir)
    track_evaluation(cfg, result)
    return result


def coverage_novelty(top_lists: list[np.ndarray], k: int, popularity: np.ndarray, n_items: int,
             n_users: int) -> dict[str, float]:
    """Catalog coverage and novelty of the top-k lists (diversity needs embeddings: sampled mode)."""
    tops = [t[:k] for t in top_lists]
    return {"coverage": M.catalog_coverage(tops, n_items),
            "novelty": float(np.mean([M.novelty(t, popularity, n_users) for t in tops]))}
