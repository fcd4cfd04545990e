"""Config section for item embeddings and the vector index."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.configbase import Section


class RetrievalConfig(Section):
    """Embedding encoder and FAISS index choice."""

    encoder: str | None = Field(
        None,
        description="Text encoder that embeds the items; None: the ranker's backbone.",
    )
    index_type: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto", description="FAISS index type; auto: exact (flat) up to exact_max_items, IVF above.",
    )
    exact_max_items: int = Field(
        100_000, ge=1,
        description="auto: the largest catalog that gets an exact index.",
    )
    nlist: int | None = Field(None, ge=1, description="ivf: number of clusters; None: about 4 x sqrt(items).")
    nprobe: int = Field(16, ge=1, description="ivf: clusters searched per query.")
    embed_batch_size: int = Field(128, ge=1, description="Item texts per embedding batch.")
    embed_actors: int = Field(1, ge=1, description="Ray Data actor pool size for embedding the catalog.")
    recency_decay: float = Field(
        0.9, gt=0.0, le=1.0,
        description="Weight multiplier per step back in the history when building a query.",
    )
    num_candidates: int = Field(200, ge=1, description="Candidates retrieved per query.")
    out: str | None = Field(None, description="Where the index is written; None: <run_dir>/index.")
