"""``SeqRetriever``: a trained retriever as a scorer. The one path from a history to candidates,
used by validation, offline evaluation, index building, hard-negative mining and serving.

A candidate's score is its log-lift over a uniform pick,

    score(i | history) = log(n * softmax(<h, v>)_i) = <h, v_i> - logsumexp_j <h, v_j> + log n,

comparable across users (0 = as likely as a random item), which the ranker reads as an input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from rayrec.data.store import load_items
from rayrec.retrieval.index import ItemIndex, choose_index_type
from rayrec.seqrec.data import batch_inputs
from rayrec.seqrec.model import SASRec, load_retriever


def _device(model: SASRec) -> torch.device:
    """Where the model's weights are: inputs go there, results come back to the CPU as numpy."""
    return next(model.parameters()).device


def retrieve_topn(model: SASRec, histories: Sequence[Sequence[int]], n: int,
                  exclude: Sequence[Sequence[int]] | None = None, index=None,
                  batch_size: int = 256) -> list[tuple[np.ndarray, np.ndarray]]:
    """(items, log-lift scores) best first for each history; ``exclude[u]`` never returned.

    With ``index`` (an ItemIndex over the model's item vectors) the top-N comes from FAISS;
    without, from an exact matmul over the catalog. Both give the same list on a flat index.
    """
    model.eval()
    device = _device(model)
    exclude = exclude if exclude is not None else histories
    out: list[tuple[np.ndarray, np.ndarray]] = []
    with torch.no_grad():
        vec = model.item_vectors()[: model.n_items]
        for s in range(0, len(histories), batch_size):
            seqs = batch_inputs(histories[s : s + batch_size], model.max_len, model.pad).to(device)
            h = model.user_vectors(seqs)
            logits = h @ vec.T  # (B, n): also the normaliser of every user's scores
            norm = (torch.logsumexp(logits, dim=1) - math.log(model.n_items)).cpu().numpy()
            h_np = h.cpu().numpy() if index is not None else None
            for r in range(len(h)):
                ex = np.array(exclude[s + r], dtype=np.int64)
                if index is not None:  # the index may hold items added since training: drop those too
                    hits = index.search(h_np[r], n, exclude=set(ex.tolist()))
                    items = np.asarray([i for i, _ in hits], dtype=np.int64)
                    raw = np.asarray([sc for _, sc in hits], dtype=np.float64)
                else:
                    ex = ex[(ex >= 0) & (ex < model.n_items)]  # ids new since training: not in the matrix
                    row = logits[r].clone()
                    row[torch.as_tensor(ex, device=device)] = float("-inf")
                    k = min(n, model.n_items - len(np.unique(ex)))
                    top = torch.topk(row, k)
                    items = top.indices.cpu().numpy().astype(np.int64)
                    raw = top.values.double().cpu().numpy()
                out.append((items, raw - norm[r]))
    return out


def score_items(model: SASRec, histories: Sequence[Sequence[int]], item_lists: Sequence[Sequence[int]],
                batch_size: int = 256) -> list[np.ndarray]:
    """The log-lift of given items for each history (e.g. a held-out item beside the top-N)."""
    model.eval()
    device = _device(model)
    out = []
    with torch.no_grad():
        vec = model.item_vectors()[: model.n_items]
        for s in range(0, len(histories), batch_size):
            seqs = batch_inputs(histories[s : s + batch_size], model.max_len, model.pad).to(device)
            h = model.user_vectors(seqs)
            logits = h @ vec.T
            norm = torch.logsumexp(logits, dim=1) - math.log(model.n_items)
            for r in range(len(h)):
                idx = torch.as_tensor(np.asarray(item_lists[s + r], dtype=np.int64), device=device)
                out.append((logits[r, idx] - norm[r]).double().cpu().numpy())
    return out


class SeqRetriever:
    """A loaded retriever artifact (``<retriever_dir>/model``), optionally with its FAISS index."""

    def __init__(self, model_dir: str, index=None):
        self.model, self.meta = load_retriever(model_dir)
        self.index = index

    @property
    def n_items(self) -> int:
        return self.model.n_items

    def item_vectors(self) -> np.ndarray:
        with torch.no_grad():
            return self.model.item_vectors()[: self.model.n_items].cpu().numpy().astype(np.float32)

    def user_vectors(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        with torch.no_grad():
            seqs = batch_inputs(histories, self.model.max_len, self.model.pad).to(_device(self.model))
            return self.model.user_vectors(seqs).cpu().numpy()

    def retrieve(self, histories: Sequence[Sequence[int]], n: int,
                 exclude: Sequence[Sequence[int]] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-n (items, log-lift) per history, excluding ``exclude`` (default: the history)."""
        known = [[int(i) for i in h if 0 <= int(i) < self.n_items] for h in histories]
        return retrieve_topn(self.model, known, n, exclude, self.index)


def build_retriever_index(cfg, retriever=None) -> str:
    """Index the trained retriever's item vectors (inner product = its own scores) at
    ``cfg.retriever_index_dir``: the collaborative half of retrieval. ``retriever``: a loaded
    SeqRetriever (e.g. with the item tower's new-item vectors), default the run's."""
    retriever = retriever or SeqRetriever(cfg.retriever_model_dir)
    items = load_items(cfg.data_dir)
    if len(items) != retriever.n_items:
        raise ValueError(f"the retriever at {cfg.retriever_model_dir} knows {retriever.n_items} items "
                         f"but the catalog at {cfg.data_dir} has {len(items)}; retrain it")
    kind = choose_index_type(len(items), cfg.retrieval.index_type, cfg.retrieval.exact_max_items)
    index = ItemIndex.from_embeddings(
        items["item_idx"].to_numpy(), retriever.item_vectors(), items["category"].fillna("").astype(str),
        index_type=kind, nlist=cfg.retrieval.nlist, nprobe=cfg.retrieval.nprobe,
        encoder=f"retriever:{cfg.retriever_model_dir}",
    )
    return index.save(cfg.retriever_index_dir)
