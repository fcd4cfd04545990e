"""Config sections for data sources and the preprocessing pipeline."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayrec.configbase import Section

SourceKind = Literal["auto", "synthetic", "movielens", "events"]
FileFormat = Literal["auto", "csv", "parquet", "jsonl"]


class ColumnMapping(Section):
    """Which columns of a generic event log hold what."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = "rating"
    event: str | None = None
    # "int": ids must be integers (non-numeric ids are rejected); "string": any non-empty text.
    id_type: Literal["int", "string"] = "int"


class CatalogSource(Section):
    """An optional item catalog with text fields (generic event logs)."""

    path: str | None = None
    format: FileFormat = "auto"
    item: str = "item_id"
    title: str = "title"
    text_fields: list[str] = Field(default_factory=lambda: ["title"])
    category: str | None = None


class SyntheticWorldConfig(Section):
    """Size and shape of the built-in synthetic world (the embedded default)."""

    n_users: int = Field(1000, ge=2)
    n_items: int = Field(500, ge=2)
    n_events: int = Field(40_000, ge=10)
    n_categories: int = Field(12, ge=1)
    latent_dim: int = Field(16, ge=1)
    popularity_exponent: float = Field(1.0, ge=0.0)
    malformed_fraction: float = Field(0.001, ge=0.0, le=0.5)
    seed: int = 0
    rows_per_chunk: int = Field(500_000, ge=1000)  # one generator task and file per chunk
    session_length: int = Field(10, ge=1)  # mean impressions per session
    days: int = Field(180, ge=1)  # time span of the log
    format: Literal["parquet", "csv"] = "parquet"
    # Item text and sequential habits (see rayrec.data.world for the generative process).
    text_noise: float = Field(0.2, ge=0.0, le=1.0)  # chance each descriptive word is random
    misleading_fraction: float = Field(0.1, ge=0.0, le=1.0)  # items whose text describes another taste
    series_fraction: float = Field(0.3, ge=0.0, le=1.0)  # items that are parts of a 2-5 part series
    series_follow: float = Field(0.5, ge=0.0, le=1.0)  # per impression: show part k+1 after a click on k
    sequential_strength: float = Field(0.5, ge=0.0, le=1.0)  # share of impressions near the last click
    # New releases (rayrec.data.synthetic.release_times): this share of the items enters the
    # catalog at a uniform time within release_window (fractions of the span), never shown before.
    release_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    release_window: tuple[float, float] = (0.5, 0.9)

    @model_validator(mode="after")
    def _window(self) -> SyntheticWorldConfig:
        lo, hi = self.release_window
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"release_window must be 0 <= start <= end <= 1, got {self.release_window}")
        return self


class DataConfig(Section):
    """Where the interaction log comes from, and where the preprocessed Parquet goes."""

    source: SourceKind = "auto"
    path: str | None = None
    format: FileFormat = "auto"
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    catalog: CatalogSource = Field(default_factory=CatalogSource)
    synthetic: SyntheticWorldConfig = Field(default_factory=SyntheticWorldConfig)
    out: str | None = None  # default: <run_dir>/data
    encoding: str = "utf-8"  # text event logs; MovieLens 100k/1m files are latin-1 by definition
    read_chunk_bytes: int = Field(64 * 1024**2, ge=1024)  # text files are read in byte ranges


class PreprocessConfig(Section):
    """The preprocessing pipeline's knobs."""

    rating_threshold: float | None = None  # None: every rating is a positive (implicit)
    positive_events: list[str] = Field(
        default_factory=lambda: ["click", "like", "purchase", "add_to_cart", "rating", "view"]
    )
    min_user_interactions: int = Field(5, ge=1)
    min_item_interactions: int = Field(1, ge=1)
    split: Literal["leave_last_out", "global_time"] = "leave_last_out"
    global_cut_quantiles: tuple[float, float] = (0.8, 0.9)
    max_history: int = Field(20, ge=1)
    num_negatives: int = Field(4, ge=0)
    eval_negatives: int = Field(99, ge=0)
    # Optional Parquet (user_idx:int64, items:list<int64>) of hard negatives, e.g. from retrieval;
    # up to num_hard_negatives of them replace random negatives in training examples.
    hard_negatives: str | None = None
    num_hard_negatives: int = Field(0, ge=0)
    # Where an existing id_map/ lives (default: the output dir), so reruns keep their ids.
    id_map_from: str | None = None
    rows_per_partition: int = Field(1_000_000, ge=1)  # user-hash partitions ~ rows / this
    num_partitions: int | None = Field(None, ge=1)  # fixed partition count (overrides the above)
    seed: int = 0
