"""Ranker training examples mined from the retriever (hard negatives, as in LlamaRec).

For the last ``retriever.mine_positions`` steps of each user's train sequence (history =
the items before the step, positive = the item at it) and for the validation item (history =
all train items), the candidates are the retriever's top-N: what the ranker will be asked to
re-order at serving time. As in LlamaRec, only steps whose positive is in that top-N become
examples: appending a missed positive would make every other candidate a top-ranked negative,
so within a list the retriever's score would anti-correlate with the label (measured: its
learned weight went negative) while at serving time the positive, when there, is just one of
the top-N. Each candidate carries the retriever's log-lift (``retrieval_scores``), the
ranker's retrieval prior.

Written in the examples layout of :mod:`rayrec.data.schema` (plus ``retrieval_scores``) under
``<retriever_dir>/examples/{train,valid}``; ``train.examples: retriever`` trains on them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayrec import storage
from rayrec.data.schema import EXAMPLES_DIR
from rayrec.data.store import load_items
from rayrec.data.text import render_history
from rayrec.seqrec.data import load_sequences
from rayrec.seqrec.scorer import SeqRetriever


def _examples(retriever, histories, positives, users, n: int, texts: np.ndarray,
              max_history_items: int) -> pd.DataFrame:
    """One example per (history, positive) whose positive is in the retriever's top-n: the
    top-n with the positive moved first (the examples layout), and their log-lifts."""
    rows = []
    for (items, s), pos, hist, u in zip(retriever.retrieve(histories, n), positives, histories, users,
                                        strict=True):
        at = np.flatnonzero(items == pos)
        if len(at) == 0:
            continue
        order = np.concatenate([at, np.flatnonzero(items != pos)])
        recent = texts[np.asarray(hist[-max_history_items:], dtype=np.int64)].tolist()
        rows.append({
            "user_idx": int(u), "history": np.asarray(hist, dtype=np.int64),
            "history_text": render_history(recent), "candidates": items[order],
            "labels": np.eye(1, len(items), dtype=np.float32)[0],
            "candidate_texts": texts[items[order]].tolist(), "timestamp": 0,
            "retrieval_scores": s[order].astype(np.float32),
        })
    return pd.DataFrame(rows)


def mine_ranker_examples(cfg) -> dict:
    """Write mined train and valid examples; returns their counts and where they went."""
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
        out[split] = len(frame)
        if frame.empty:  # nothing the retriever found: train.examples auto falls back to sampled
            continue
        storage.write_table(frame.sample(frac=1.0, random_state=cfg.retriever.seed),
                            storage.join(cfg.retriever_dir, EXAMPLES_DIR, split, "part-0.parquet"))
    out["positions"] = len(pos)
    return {"examples": storage.join(cfg.retriever_dir, EXAMPLES_DIR), "candidates": n, **out}
