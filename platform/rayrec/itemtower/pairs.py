"""What the item tower learns from: the trained retriever's own view of each click.

For every training transition (user state h_t after the user's first t items, next item i)
of the retriever's train split, h_t is computed once by the trained retriever (eval mode).
The tower then learns to put t_i (item i's text vector) where the retriever's softmax over
the warm catalog ranks it first for h_t: the sequence loss, with the item read from its text.

Warm items are split into the tower's train and validation items (seeded): validation
items' text is never trained on, so their text-only rank measures what a new item gets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rayrec.seqrec.data import load_sequences, training_tensors
from rayrec.seqrec.model import SASRec


@dataclass
class TowerData:
    """Arrays the worker loop reads (numpy: cheap to ship to Ray Train workers)."""

    states: np.ndarray  # (P, dim) float32 user states h_t
    targets: np.ndarray  # (P,) int64 the clicked item after each state
    item_vectors: np.ndarray  # (n_items, dim) float32 the retriever's trained vectors
    trained: np.ndarray  # (n_items,) bool: items with a training interaction
    train_items: np.ndarray  # warm items the tower trains on
    valid_items: np.ndarray  # warm items held out of the tower (validation)
    texts: list[str]  # every item's text, row i = item i


@torch.no_grad()
def user_states(model: SASRec, sequences: list[np.ndarray], batch_size: int = 128
                ) -> tuple[np.ndarray, np.ndarray]:
    """(h_t, next item) at every position of each sequence's newest window."""
    model.eval()
    states, targets = [], []
    for s in range(0, len(sequences), batch_size):
        inputs, nxt = training_tensors(sequences[s : s + batch_size], model.max_len, model.pad)
        h = model(inputs)
        keep = nxt != model.pad
        states.append(h[keep].numpy())
        targets.append(nxt[keep].numpy())
    return np.concatenate(states).astype(np.float32), np.concatenate(targets).astype(np.int64)


def tower_data(model: SASRec, data_dir: str, texts: list[str], trained: np.ndarray,
               valid_fraction: float, seed: int) -> TowerData:
    """Pairs from every user's train sequence (the ``valid`` split's history: train positives)."""
    seqs = [np.asarray(h, np.int64) for h in load_sequences(data_dir, "valid")["history"] if len(h) >= 2]
    states, targets = user_states(model, seqs)
    with torch.no_grad():
        vectors = model.item_vectors()[: model.n_items].numpy().astype(np.float32)
    clicked = np.unique(targets)
    clicked = clicked[np.asarray(trained, bool)[clicked]]
    rng = np.random.default_rng(seed)
    valid = np.sort(rng.choice(clicked, size=max(1, int(round(valid_fraction * len(clicked)))), replace=False))
    train = np.setdiff1d(clicked, valid)
    return TowerData(states, targets, vectors, np.asarray(trained, bool), train, valid, list(texts))
