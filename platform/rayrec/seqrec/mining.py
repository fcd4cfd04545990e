"""Ranker training examples mined from the retriever (hard negatives, as in LlamaRec).

For the last ``retriever.mine_positions`` steps of each user's train sequence (history =
the items before the step, positive = the item at it) and for the validation item (history =
all train items), the candidates are the positive plus the retriever's top-ranked other
items: what the ranker will be asked to re-order at serving time. Each candidate carries the
retriever's log-lift (``retrieval_scores``), the ranker's retrieval prior.

Written in the examples layout of :mod:`rayrec.data.schema` (plus ``retrieval_scores``) under
``<retriever_dir>/examples/{train,valid}``; ``train.examples: retriever`` trains on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rayrec.data.schema import EXAMPLES_DIR
from rayrec.data.text import render_history


def _examples(retriever, histories, positives, users, n: int, texts: np.ndarray,
              max_history_items: int) -> pd.DataFrame:
    from rayrec.seqrec.scorer import score_items

    tops = retriever.retrieve(histories, n)
    cands, scores = [], []
    for (items, s), pos in zip(tops, positives, strict=True):
        keep = items != pos
        cands.append(np.concatenate([[pos], items[keep][: n - 1]]).astype(np.int64))
        scores.append(s[keep][: n - 1])
    pos_scores = score_items(retriever.model, histories, [[p] for p in positives])
    return pd.DataFrame({
        "user_idx": np.asarray(users, dtype=np.int64),
        "history": [np.asarray(h, dtype=np.int64) for h in histories],
        "history_text": [render_history(texts[np.asarray(h[-max_history_items:], dtype=np.int64)].tolist())
                         for h in histories],
        "candidates": cands,
        "labels": [np.eye(1, len(c), dtype=np.float32)[0] for c in cands],
        "candidate_texts": [texts[c].tolist() for c in cands],
        "timestamp": np.zeros(len(cands), dtype=np.int64),
        "retrieval_scores": [np.concatenate([ps, s]).astype(np.float32)
                             for ps, s in zip(pos_scores, scores, strict=True)],
    })


def mine_ranker_examples(cfg) -> dict:
    """Write mined train and valid examples; returns their counts and where they went."""
    from rayrec.data.store import load_items
    from rayrec.seqrec.data import load_sequences
    from rayrec.seqrec.scorer import SeqRetriever

    retriever = SeqRetriever(cfg.retriever_model_dir)  # exact top-N: the same lists as a flat index
    texts = load_items(cfg.data_dir)["text"].astype(str).to_numpy()
    n, m = cfg.retriever.mine_candidates, cfg.retriever.mine_positions
    valid = load_sequences(cfg.data_dir, "valid")  # history = train items, target = valid item
    users, hists, pos = [], [], []
    for u, seq in zip(valid["user_idx"], valid["history"], strict=True):
        for t in range(max(1, len(seq) - m), len(seq)):
            users.append(u)
            hists.append(seq[:t])
            pos.append(int(seq[t]))
    out = {}
    for split, frame in (
        ("train", _examples(retriever, hists, pos, users, n, texts, cfg.model.max_history_items)),
        ("valid", _examples(retriever, valid["history"].tolist(), valid["target"].astype(int).tolist(),
                            valid["user_idx"].tolist(), n, texts, cfg.model.max_history_items)),
    ):
        d = Path(cfg.retriever_dir) / EXAMPLES_DIR / split
        d.mkdir(parents=True, exist_ok=True)
        frame.sample(frac=1.0, random_state=cfg.retriever.seed).to_parquet(d / "part-0.parquet", index=False)
        out[split] = len(frame)
    return {"examples": str(Path(cfg.retriever_dir) / EXAMPLES_DIR), "candidates": n, **out}
