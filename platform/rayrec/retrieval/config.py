"""Config section for item embeddings and the vector index."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.configbase import Section


class RetrievalConfig(Section):
    """Embedding encoder and FAISS index choice."""

    encoder: str | None = None  # default: the ranker's backbone
    index_type: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    exact_max_items: int = Field(100_000, ge=1)  # 'auto' uses an exact index up to this size
    nlist: int | None = Field(None, ge=1)
    nprobe: int = Field(16, ge=1)
    embed_batch_size: int = Field(128, ge=1)
    embed_actors: int = Field(1, ge=1)  # Ray Data actor pool size for embedding the catalog
    recency_decay: float = Field(0.9, gt=0.0, le=1.0)  # history query weight per step back
    num_candidates: int = Field(200, ge=1)
    out: str | None = None  # default: <run_dir>/index
