"""``NewItemEncoder``: the one way to turn item text into retriever vectors.

Evaluation (the new-item protocol), the retriever's index and the endpoint's ``POST /items``
all call it, so a posted item gets exactly the vector the protocol measured. It uses, first
found:

  tuned   the LoRA-tuned tower at ``<run_dir>/tower`` (`rayrec train-tower`)
  frozen  the text-grounded retriever's own text part, W x with x the frozen encoder's vector
          (``retriever.text_init``)

and is unavailable (``available`` False, ``reason`` says why) for an ID-only retriever: such a
model has no vector for an item it never saw, so a new item is served by the text index alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from rayrec import storage
from rayrec.data.store import load_items
from rayrec.itemtower.model import META_FILE, WEIGHTS_FILE, encode, load_tower
from rayrec.retrieval.encoder import TextEncoder
from rayrec.seqrec.model import MODEL_FILE, load_retriever
from rayrec.seqrec.scorer import SeqRetriever, build_retriever_index

log = logging.getLogger(__name__)


def tower_model_dir(cfg) -> str:
    """The published tower (best checkpoint by validation) under ``<run_dir>/tower``."""
    return storage.join(cfg.tower_dir, "model")


def encoder_files(cfg) -> list[str]:
    """The files whose bytes decide what :class:`NewItemEncoder` returns (the retriever's
    weights and the tower's): vectors stored under another fingerprint of them are stale."""
    return [storage.join(cfg.retriever_model_dir, MODEL_FILE), storage.join(tower_model_dir(cfg), WEIGHTS_FILE)]


class NewItemEncoder:
    """Loaded once (a replica, an evaluation); ``encode(texts)`` -> (n, retriever dim) float32."""

    def __init__(self, cfg, prefer: str = "tuned") -> None:
        self.kind, self.reason = None, None
        self._tower = self._tokenizer = self._proj = self._encoder = None
        self.max_length = cfg.tower.max_length
        if prefer == "tuned" and storage.is_file(storage.join(tower_model_dir(cfg), META_FILE)):
            self._tower, self._tokenizer, meta = load_tower(tower_model_dir(cfg))
            self.max_length = int(meta["tower"]["max_length"])
            self.kind = "tuned"
            return
        try:
            model, _ = load_retriever(cfg.retriever_model_dir)
        except FileNotFoundError as exc:
            self.reason = str(exc)
            return
        if model.text_proj is None:
            self.reason = ("the retriever is ID-only (retriever.text_init: false): it has no vector for an "
                           "item it never saw")
            return

        self._proj = model.text_proj.weight.detach().cpu().numpy().T  # (text dim, retriever dim)
        self._encoder = TextEncoder(cfg.retrieval.encoder or cfg.model.backbone)
        self.kind = "frozen"

    @property
    def available(self) -> bool:
        return self.kind is not None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.kind is None:
            raise RuntimeError(f"no text-to-retriever encoder: {self.reason}")
        if self.kind == "tuned":
            return encode(self._tower, self._tokenizer, list(texts), self.max_length)
        return (self._encoder.encode(list(texts)) @ self._proj).astype(np.float32)


def text_grounded_retriever(cfg, prefer: str = "tuned"):
    """The run's SeqRetriever whose items without a training interaction read their vectors
    from :class:`NewItemEncoder` (``prefer`` "tuned": the tower when trained; "frozen": the
    retriever's own text part). An ID-only retriever is returned as it is."""
    retriever = SeqRetriever(cfg.retriever_model_dir)
    if retriever.model.text_proj is None or prefer != "tuned":
        return retriever
    encoder = NewItemEncoder(cfg, prefer="tuned")
    if encoder.kind == "tuned":
        model = retriever.model
        new = np.flatnonzero(~model.trained.cpu().numpy())  # only these rows are read
        vectors = np.zeros((model.n_items, model.item.weight.shape[1]), np.float32)
        if len(new):
            texts = load_items(cfg.data_dir)["text"].astype(str).to_numpy()
            vectors[new] = encoder.encode(texts[new].tolist())
        model.set_new_item_vectors(vectors)
    return retriever


def build_text_grounded_index(cfg) -> str:
    """Rebuild ``cfg.retriever_index_dir`` from :func:`text_grounded_retriever`: what the
    endpoint searches (new items from the tuned tower)."""
    return build_retriever_index(cfg, text_grounded_retriever(cfg))
