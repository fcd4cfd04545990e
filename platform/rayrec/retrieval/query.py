"""Query vectors for the item index: from a user's history, from free text, or both."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rayrec.retrieval.encoder import TextEncoder
from rayrec.retrieval.index import ItemIndex


def _normalise(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if norm == 0.0 or not np.isfinite(norm):
        raise ValueError("query vector is zero; cannot normalise")
    return (v / norm).astype(np.float32)


def history_query(index: ItemIndex, item_idxs: Sequence[int], recency_decay: float = 0.9) -> np.ndarray:
    """Recency-weighted mean of the history items' embeddings, unit norm, shape (dim,).

    ``item_idxs`` is oldest first; the newest item has weight 1, the one before it
    ``recency_decay``, and so on. Items unknown to the index are skipped.
    """
    if not 0.0 < recency_decay <= 1.0:
        raise ValueError(f"recency_decay must be in (0, 1], got {recency_decay}")
    known = [int(i) for i in item_idxs if index.has(int(i))]
    if not known:
        raise ValueError("history has no item known to the index; cannot build a query")
    weights = recency_decay ** np.arange(len(known) - 1, -1, -1, dtype=np.float64)
    emb = index.embeddings_for(known).astype(np.float64)
    return _normalise((weights[:, None] * emb).sum(0))


def text_query(encoder: TextEncoder, text: str) -> np.ndarray:
    """Embed a free-text query, shape (dim,)."""
    if not text or not text.strip():
        raise ValueError("text query is empty")
    return encoder.encode([text])[0]


def combined_query(
    index: ItemIndex,
    item_idxs: Sequence[int] | None = None,
    text: str | None = None,
    encoder: TextEncoder | None = None,
    text_weight: float = 0.5,
    recency_decay: float = 0.9,
) -> np.ndarray:
    """Mix a history query and a text query: ``(1-w) * history + w * text``, unit norm.

    Either part may be missing (then the other is returned); both missing is an error.
    """
    if not 0.0 <= text_weight <= 1.0:
        raise ValueError(f"text_weight must be in [0, 1], got {text_weight}")
    parts: list[tuple[float, np.ndarray]] = []
    if item_idxs and any(index.has(int(i)) for i in item_idxs):
        parts.append((1.0 - text_weight, history_query(index, item_idxs, recency_decay)))
    if text and text.strip():
        if encoder is None:
            raise ValueError("a text query needs an encoder")
        parts.append((text_weight, text_query(encoder, text)))
    if not parts:
        raise ValueError("need a history with known items or a non-empty text")
    if len(parts) == 1:
        return parts[0][1]
    return _normalise(sum(w * v.astype(np.float64) for w, v in parts))


def blend_hits(history_hits: Sequence[tuple[int, float]], text_hits: Sequence[tuple[int, float]],
               text_weight: float, k: int) -> list[tuple[int, float]]:
    """Merge a history list and a text list whose scores live in different spaces.

    Each list's scores are min-max scaled to [0, 1] (an item missing from a list gets 0 there);
    the blend is ``(1 - w) * history + w * text``, best first, top ``k``.
    """
    def scaled(hits):
        if not hits:
            return {}
        v = np.asarray([s for _, s in hits], dtype=np.float64)
        span = v.max() - v.min()
        return {int(i): float((s - v.min()) / span) if span > 0 else 1.0 for i, s in hits}

    h, t = scaled(history_hits), scaled(text_hits)
    merged = {i: (1.0 - text_weight) * h.get(i, 0.0) + text_weight * t.get(i, 0.0) for i in {*h, *t}}
    return sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
