"""Full-catalog evaluation: what each system would show, ranked against everything unseen.

Protocol, for every user of the split (the reference protocol of ../shared/README.md):
  input      everything the user interacted with before the held-out item (test: train +
             validation item), in time order; those items are excluded from every list
  systems    :mod:`rayrec.evaluation.systems` (popularity, ALS, text retrieval, the sequential
             retriever, each retriever + the ranker, generation, the synthetic world's oracle)
  a miss     a held-out item that a system did not put in its list scores 0: nothing is
             inserted, so a retrieval miss is a ranking miss
  metrics    HR@K, NDCG@K, MRR within the list, per user, averaged; paired bootstrap 95% CIs
             of the NDCG@10 differences; recall@N of retrieval (held-out item reaches the ranker)

Every system reads the same users and the same exclusions; each is timed per user.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rayrec import metrics as M
from rayrec import storage
from rayrec.data.store import load_items
from rayrec.evaluation import summary, systems
from rayrec.evaluation.scoring import resolve_checkpoint
from rayrec.retrieval.index import META_FILE
from rayrec.seqrec.data import load_sequences

BASELINES = ("popularity", "als")


@dataclass
class Lists:
    """Every system's top lists for the evaluated users, and how long each took."""

    lists: dict[str, list[np.ndarray]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)  # what a system reports about itself
    retrieved: dict[str, list] = field(default_factory=dict)  # name -> (items, scores) per user

    def add(self, name: str, make: Callable[[], Any], with_notes: bool = False) -> Any:
        """Time ``make()``, which returns the lists, or (lists, notes) when ``with_notes``."""
        t0 = time.perf_counter()
        out = make()
        self.seconds[name] = time.perf_counter() - t0
        self.lists[name], self.notes[name] = out if with_notes else (out, None)
        return out


def list_metrics(ranked: np.ndarray, target: int, ks: list[int]) -> dict[str, float]:
    """HR@K, NDCG@K and reciprocal rank of ``target`` in one top list (0 when absent)."""
    row = {f"hr@{k}": M.hit_rate_at_k(ranked, target, k) for k in ks}
    row |= {f"ndcg@{k}": M.ndcg_at_k(ranked, target, k) for k in ks}
    row["mrr"] = M.reciprocal_rank(ranked, target)
    return row


def coverage_novelty(top_lists: list[np.ndarray], k: int, popularity: np.ndarray, n_items: int,
                     n_users: int) -> dict[str, float]:
    """Catalog coverage and novelty of the top-k lists (diversity needs embeddings: sampled mode)."""
    tops = [t[:k] for t in top_lists]
    return {"coverage": M.catalog_coverage(tops, n_items),
            "novelty": float(np.mean([M.novelty(t, popularity, n_users) for t in tops]))}


def masked_items(cfg, histories: list[np.ndarray]) -> list[np.ndarray]:
    """What no list may show each user (``evaluate.mask``): every item seen before the held-out
    one, or only the model's input window, the newest ``mask_window`` (LlamaRec's protocol)."""
    if cfg.evaluate.mask == "seen":
        return histories
    window = cfg.evaluate.mask_window or cfg.retriever.max_len
    return [h[-window:] for h in histories]


def system_lists(cfg, items: pd.DataFrame, all_users: pd.DataFrame, users: pd.DataFrame,
                 retrievers: dict[str, Any] | None, checkpoint: str | None) -> Lists:
    """Run every available system on ``users``: baselines, retrievers (``retrievers``, default
    the run's), text retrieval, generation, each retriever + the ranker at ``checkpoint``, oracle."""
    ec = cfg.evaluate
    histories = users["history"].tolist()
    masks = masked_items(cfg, histories)
    depth = max(max(ec.ks), ec.rank_depth)  # every list long enough for K and for the ranker
    popularity = items["popularity"].to_numpy(dtype=np.float64)
    out = Lists()
    if ec.baselines:
        out.add("popularity", lambda: systems.popularity_lists(popularity, masks, depth))
        out.add("als", lambda: systems.als_lists(cfg, all_users, users, len(items), depth,
                                                 None if ec.mask == "seen" else masks), True)
    if retrievers is None:
        retrievers = ({"retriever": systems.load_seq_retriever(cfg)}
                      if storage.is_dir(cfg.retriever_model_dir) else {})
    for name, retriever in retrievers.items():
        found = out.add(name, lambda r=retriever: r.retrieve(histories, depth, masks))
        out.retrieved[name], out.lists[name] = found, [r[0] for r in found]
    if storage.is_file(storage.join(cfg.index_dir, META_FILE)) and (ec.baselines or not out.retrieved):
        text = out.add("text_retrieval", lambda: systems.text_retrieval_lists(cfg, histories, depth, masks))
        if not out.retrieved:  # no sequential retriever: the text index is the retrieval stage
            out.retrieved["text_retrieval"] = [(t, None) for t in text]
    if ec.generative.enabled:
        out.add("generative", lambda: systems.generative_lists(cfg, histories, items), True)
    for base, found in list(out.retrieved.items()) if checkpoint is not None else ():
        top_n = [(c[: ec.rank_depth], None if s is None else s[: ec.rank_depth]) for c, s in found]
        out.add(f"{base}_ranker", lambda t=top_n: systems.ranker_lists(cfg, users, t, items, checkpoint))
    if ec.baselines:
        t0 = time.perf_counter()
        oracle = systems.oracle_lists(cfg, users, items, depth, masks)
        if oracle is not None:
            out.lists["oracle"], out.seconds["oracle"] = oracle, time.perf_counter() - t0
    return out


def per_user_rows(cfg, users: pd.DataFrame, lists: dict[str, list[np.ndarray]],
                  held_out: np.ndarray | None) -> pd.DataFrame:
    """One row per (user, system): the list metrics, recall of the ranker's depth, what it shows,
    and with ``held_out`` (new items) the share of its top-K slots they get."""
    ec, ks = cfg.evaluate, sorted(set(cfg.evaluate.ks))
    rows = []
    for m, tops in lists.items():
        for (u, y), top in zip(users[["user_idx", "target"]].itertuples(index=False), tops, strict=True):
            row = {"user_idx": int(u), "model": m, **list_metrics(top, int(y), ks),
                   f"recall@{ec.rank_depth}": float(int(y) in top[: ec.rank_depth]),
                   "top": top[: max(ks)].tolist()}
            if held_out is not None:
                row[f"new_share@{ec.beyond_k}"] = float(np.isin(top[: ec.beyond_k], held_out).sum()) / ec.beyond_k
            rows.append(row)
    return pd.DataFrame(rows)


def describe_systems(cfg, out: Lists, checkpoint: str | None) -> dict[str, str]:
    """What the report says each system is."""
    ec, gc = cfg.evaluate, cfg.evaluate.generative
    return {
        "popularity": "train-split interaction counts",
        "als": f"implicit ALS tuned on validation NDCG@10: {out.notes.get('als')}",
        "text_retrieval": "MiniLM item-text embeddings, recency-weighted history query (FAISS)",
        "oracle": "synthetic world's true next-click probability (the best possible ranking)",
        "retriever": f"sequential retriever (SASRec) at {cfg.retriever_model_dir}",
        "generative": (f"{gc.backbone} {'+ adapter ' + gc.adapter if gc.adapter else 'zero-shot'}"
                       f" ({gc.history_items} titles per prompt) generating {gc.k} catalog titles "
                       f"(trie-constrained beam search); beams and latency {out.notes.get('generative')}"),
        **{f"{b}_ranker": f"{b} top-{ec.rank_depth} re-scored by {cfg.model.kind} on "
                          f"{cfg.model.backbone}, checkpoint {checkpoint}" for b in out.retrieved},
    }


def run_full_catalog(cfg, retrievers: dict[str, Any] | None = None, held_out: np.ndarray | None = None,
                     describe: dict[str, str] | None = None, pairs: list[tuple[str, str]] = (),
                     protocol_notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate every available system on the full catalog; write the report to cfg.eval_dir.

    ``retrievers``: name -> a loaded SeqRetriever to evaluate (default: the run's, as
    "retriever"; the first is what the ranker re-scores). ``held_out``: the new-item protocol's
    held-out items (rayrec.data.newitems): each list's share of them in its top-K is reported.
    ``describe`` / ``pairs``: what the report says each extra system is, and extra paired
    comparisons (a, b) of NDCG@10; ``protocol_notes``: added to the report's protocol section."""
    t0 = time.time()
    ec = cfg.evaluate
    items = load_items(cfg.data_dir)
    all_users = load_sequences(cfg.data_dir, ec.split)
    if all_users.empty:
        raise ValueError(f"no users with a held-out {ec.split} item under {cfg.data_dir}")
    users = summary.select_sample(all_users, ec.max_users, ec.seed)
    checkpoint = resolve_checkpoint(cfg, required=False) if ec.rank_retrieved else None
    out = system_lists(cfg, items, all_users, users, retrievers, checkpoint)
    models = list(out.lists)

    per_user = per_user_rows(cfg, users, out.lists, held_out)
    means = summary.means_by_model(per_user, models, [c for c in per_user.columns if c not in ("user_idx", "model", "top")])
    popularity = items["popularity"].to_numpy(dtype=np.float64)
    for m in models:
        means[m]["ms_per_user"] = 1000 * out.seconds[m] / len(users)
        means[m] |= {f"{k}@{ec.beyond_k}": v for k, v in coverage_novelty(
            out.lists[m], ec.beyond_k, popularity, len(items), len(all_users)).items()}
    compared = [(m, b) for m in models if m not in (*BASELINES, "oracle") for b in BASELINES if b in models]
    compared += [(m, m.removesuffix("_ranker")) for m in models if m.endswith("_ranker")]
    compared += [(a, b) for a, b in pairs if a in models and b in models]
    comparisons = summary.compare(per_user, compared, summary.headline_metric(sorted(set(ec.ks))), ec)

    histories = users["history"].tolist()
    protocol = {
        "data_dir": cfg.data_dir, "split": ec.split, "users": len(users),
        "users_in_split": len(all_users), "user_selection": summary.user_selection(len(users), len(all_users), ec),
        "candidates": "full", "task": "full-catalog ranking (not re-ranking of sampled candidates)",
        "candidates_description": (
            f"every catalog item ({len(items)}) the user has not interacted with before the held-out "
            "item; a held-out item missing from a system's list is a miss (nothing inserted)"
            if ec.mask == "seen" else
            f"every catalog item ({len(items)}) except the newest "
            f"{ec.mask_window or cfg.retriever.max_len} items of the user's input (LlamaRec's mask: "
            "older seen items may be listed and count as misses); a held-out item missing from a "
            "system's list is a miss (nothing inserted)"),
        "candidates_per_user": {"mean": float(len(items) - np.mean([len(set(m.tolist()))
                                                                    for m in masked_items(cfg, histories)]))},
        "ranker_depth": f"the ranker re-scores the {next(iter(out.retrieved), None)}'s top-{ec.rank_depth}",
        "models": describe_systems(cfg, out, checkpoint),
        "ks": sorted(set(ec.ks)), "seed": ec.seed,
    }
    protocol |= protocol_notes or {}
    protocol["models"] |= describe or {}
    protocol["models"] = {m: d for m, d in protocol["models"].items() if m in models}
    return summary.finish(cfg, protocol, means, comparisons, per_user, t0,
                  {f"{m}_seconds": s for m, s in out.seconds.items()})
