"""The systems of the full-catalog protocol, each as a function that returns every evaluated
user's top list (item ids, best first, the user's seen items excluded).

  popularity        train-split counts
  als               implicit ALS, tuned on validation, refit on every user's evaluation input
  text_retrieval    recency-weighted MiniLM history query in the item text index (FAISS)
  retriever         the sequential retriever's top-K (its FAISS index): :func:`load_seq_retriever`
  *_ranker          a retriever's top-N re-scored by the LoRA ranker (the one scoring path)
  generative        a causal LM names k catalog titles (trie-constrained beam search)
  oracle            synthetic data only: the world's true next-click probability
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayrec.data.store import load_users
from rayrec.data.text import render_history
from rayrec.data.world import saved_world
from rayrec.evaluation.als import AlsBaseline
from rayrec.evaluation.baselines import popularity_top
from rayrec.evaluation.scoring import EvalCase, score_cases
from rayrec.generative.adapter import resolve_adapter
from rayrec.generative.lists import Generator
from rayrec.models.prior import popularity_prior
from rayrec.retrieval.index import ItemIndex
from rayrec.retrieval.query import history_query
from rayrec.seqrec.data import load_sequences
from rayrec.seqrec.scorer import SeqRetriever


def popularity_lists(popularity: np.ndarray, masks: list[np.ndarray], n: int) -> list[np.ndarray]:
    """The n most popular items outside each user's mask."""
    return [popularity_top(popularity, n, exclude=set(m.tolist())) for m in masks]


def als_lists(cfg, everyone: pd.DataFrame, users: pd.DataFrame, n_items: int, n: int,
              masks: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], dict]:
    """ALS tuned on validation (fit on train), then refit on every user's evaluation input;
    each list excludes the user's mask (default: everything the fit saw of them)."""
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
    return als.topn(users["user_idx"].tolist(), n, masks), tuned


def text_retrieval_lists(cfg, histories: list[np.ndarray], n: int,
                         masks: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """The text index's top-n for the recency-weighted query of the newest history items,
    each user's mask (default: the history) excluded."""
    index = ItemIndex.load(cfg.index_dir)
    out = []
    for h, m in zip(histories, masks or histories, strict=True):
        recent = h[-cfg.model.max_history_items * 2 :]  # decay makes older items negligible
        try:
            q = history_query(index, recent.tolist(), cfg.retrieval.recency_decay)
        except ValueError:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        out.append(np.asarray([i for i, _ in index.search(q, n, exclude=set(m.tolist()))], dtype=np.int64))
    return out


def oracle_lists(cfg, users: pd.DataFrame, items: pd.DataFrame, n: int,
                 masks: list[np.ndarray] | None = None) -> list[np.ndarray] | None:
    """Synthetic data only: the world's true next-click probability given the user and their
    last item (:meth:`SyntheticWorld.next_item_probability`), the best any system can rank.
    None when the data has no world ground truth."""
    world = saved_world(cfg.data_dir)
    if world is None:
        return None
    world_item = items["item_id"].astype(int).to_numpy()  # item_idx -> the world's item id
    raw_user = load_users(cfg.data_dir).set_index("user_idx")["user_id"].astype(int)
    out = []
    for u, h, m in zip(users["user_idx"], users["history"], masks or users["history"], strict=True):
        p = world.next_item_probability(int(raw_user[u]), int(world_item[h[-1]]))[world_item].copy()
        p[m] = -1.0  # masked (seen) items are excluded, as for every system
        out.append(np.argsort(-p, kind="stable")[:n].astype(np.int64))
    return out


def generative_lists(cfg, histories: list[np.ndarray], items: pd.DataFrame) -> tuple[list[np.ndarray], dict]:
    """The generator's k items per user (catalog-constrained beam search, seen items banned)
    and its latency per request and per decoding step."""
    gc = cfg.evaluate.generative
    adapter = resolve_adapter(cfg, gc.adapter, gc.backbone, gc.history_items)
    gen = Generator.load(gc.backbone, items["title"].astype(str).to_numpy(), adapter)
    beams = max(gc.beams, gc.k)
    lists = gen.lists(histories, gc.k, beams=beams, history_items=gc.history_items)
    return lists, {"beams": beams, **gen.latency(), "adapter": adapter}


def load_seq_retriever(cfg) -> SeqRetriever:
    """The trained retriever with its FAISS index (the endpoint's history path)."""
    return SeqRetriever(cfg.retriever_model_dir, ItemIndex.load(cfg.retriever_index_dir))


def ranker_lists(cfg, users: pd.DataFrame, retrieved: list[tuple[np.ndarray, np.ndarray]],
                 items: pd.DataFrame, checkpoint: str | None) -> list[np.ndarray]:
    """Re-score each user's retrieved candidates with the ranker (the one scoring path)."""
    texts = items["text"].astype(str).to_numpy()
    cases = []
    for (u, h, y), (cands, scores) in zip(users[["user_idx", "history", "target"]].itertuples(index=False),
                                          retrieved, strict=True):
        recent = texts[h[-cfg.model.max_history_items :]].tolist()
        cases.append(EvalCase(int(u), h.tolist(), render_history(recent), cands, int(y),
                              retrieval_scores=scores))
    prior = popularity_prior(items["popularity"].to_numpy()) if cfg.model.popularity_prior else None
    score_cases(cfg, cases, texts, checkpoint, prior)
    return [c.candidates[np.argsort(-c.scores["ranker"], kind="stable")] for c in cases]
