"""Config sections for data sources and the preprocessing pipeline."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayrec.configbase import Section

SourceKind = Literal["auto", "synthetic", "movielens", "events"]
FileFormat = Literal["auto", "csv", "parquet", "jsonl"]


class ColumnMapping(Section):
    """Which columns of a generic event log hold what."""

    user: str = Field("user_id", description="Column holding the user id.")
    item: str = Field("item_id", description="Column holding the item id.")
    timestamp: str = Field(
        "timestamp",
        description="Column holding the event time (what the split orders by).",
    )
    rating: str | None = Field(
        "rating",
        description="Column holding an explicit rating; None: the log has no ratings.",
    )
    event: str | None = Field(
        None,
        description="Column holding the event type (click, purchase, ...); None: the log has no event types.",
    )
    id_type: Literal["int", "string"] = Field(
        "int",
        description="Id type of the user and item columns: int rejects non-numeric ids, string accepts any "
        "non-empty text.",
    )


class CatalogSource(Section):
    """An optional item catalog with text fields (generic event logs)."""

    path: str | None = Field(
        None,
        description="Catalog file or URI with one row per item; None: no catalog (items have no text).",
    )
    format: FileFormat = Field("auto", description="Catalog file format; auto detects it from the file name.")
    item: str = Field(
        "item_id",
        description="Catalog column holding the item id (matches the event log's item column).",
    )
    title: str = Field("title", description="Catalog column holding the item title.")
    text_fields: list[str] = Field(
        default_factory=lambda: ["title"],
        description="Catalog columns joined into the item text the models read.",
    )
    category: str | None = Field(
        None,
        description="Catalog column holding the item category; None: items have no category.",
    )


class SyntheticWorldConfig(Section):
    """Size and shape of the built-in synthetic world (the embedded default)."""

    n_users: int = Field(1000, ge=2, description="Number of users in the synthetic world.")
    n_items: int = Field(500, ge=2, description="Number of items in the synthetic catalog.")
    n_events: int = Field(40_000, ge=10, description="Number of interaction events generated.")
    n_categories: int = Field(
        12, ge=1,
        description="Number of item categories (capped by the built-in category names).",
    )
    latent_dim: int = Field(16, ge=1, description="Dimension of the hidden user and item taste vectors.")
    popularity_exponent: float = Field(
        1.0, ge=0.0,
        description="Zipf exponent of item popularity (0: all items equally popular).",
    )
    malformed_fraction: float = Field(
        0.001, ge=0.0, le=0.5,
        description="Share of rows written deliberately malformed, to exercise validation.",
    )
    seed: int = Field(0, description="Random seed of the synthetic world.")
    rows_per_chunk: int = Field(
        500_000, ge=1000,
        description="Rows per generated chunk: one generator task and one file per chunk.",
    )
    session_length: int = Field(10, ge=1, description="Mean number of impressions per session.")
    days: int = Field(180, ge=1, description="Time span of the generated log, in days.")
    format: Literal["parquet", "csv"] = Field("parquet", description="File format of the generated log.")
    # Item text and sequential habits (see rayrec.data.world for the generative process).
    text_noise: float = Field(
        0.2, ge=0.0, le=1.0,
        description="Chance that each descriptive word of an item's text is random.",
    )
    misleading_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of items whose text describes another taste than their own."
    )
    series_fraction: float = Field(
        0.3, ge=0.0, le=1.0,
        description="Share of items that are parts of a 2-5 part series.",
    )
    series_follow: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Chance per impression of showing part k+1 of a series after a click on part k.",
    )
    sequential_strength: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Share of impressions drawn near the user's last click (sequential habits).",
    )
    # New releases (rayrec.data.synthetic.release_times): this share of the items enters the
    # catalog at a uniform time within release_window (fractions of the span), never shown before.
    release_fraction: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Share of items released during the log rather than present from the start (0: none).",
    )
    release_window: tuple[float, float] = Field(
        (0.5, 0.9), description="Start and end of the release period, as fractions of the log's time span."
    )

    @model_validator(mode="after")
    def _window(self) -> SyntheticWorldConfig:
        lo, hi = self.release_window
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"release_window must be 0 <= start <= end <= 1, got {self.release_window}")
        return self


class DataConfig(Section):
    """Where the interaction log comes from, and where the preprocessed Parquet goes."""

    source: SourceKind = Field(
        "auto",
        description="Input kind; auto detects it from the files (synthetic when data.path is None).",
    )
    path: str | None = Field(
        None,
        description="Input data file, directory or URI; None: generate the synthetic world.",
    )
    format: FileFormat = Field("auto", description="Event file format; auto detects it from the file names.")
    columns: ColumnMapping = Field(
        default_factory=ColumnMapping,
        description="Which columns of a generic event log hold what.",
    )
    catalog: CatalogSource = Field(
        default_factory=CatalogSource,
        description="Optional item catalog with text fields.",
    )
    synthetic: SyntheticWorldConfig = Field(
        default_factory=SyntheticWorldConfig, description="Size and shape of the built-in synthetic world."
    )
    out: str | None = Field(None, description="Where the preprocessed data is written; None: <run_dir>/data.")
    encoding: str = Field(
        "utf-8",
        description="Text encoding of generic text event logs (MovieLens 100k/1m files are always read as "
        "latin-1).",
    )
    read_chunk_bytes: int = Field(
        64 * 1024**2, ge=1024,
        description="Byte-range size in which text files are read, in bytes.",
    )


class PreprocessConfig(Section):
    """The preprocessing pipeline's knobs."""

    rating_threshold: float | None = Field(
        None,
        description="Minimum rating that counts as a positive; None: every rating is a positive (implicit "
        "feedback).",
    )
    positive_events: list[str] = Field(
        default_factory=lambda: ["click", "like", "purchase", "add_to_cart", "rating", "view"],
        description="Event types that count as positives.",
    )
    min_user_interactions: int = Field(
        5, ge=1,
        description="k-core filter: users with fewer positives are dropped.",
    )
    min_item_interactions: int = Field(
        1, ge=1,
        description="k-core filter: items with fewer positives are dropped.",
    )
    split: Literal["leave_last_out", "global_time"] = Field(
        "leave_last_out",
        description="How to split train/valid/test: each user's last items, or global time cuts.",
    )
    global_cut_quantiles: tuple[float, float] = Field(
        (0.8, 0.9), description="global_time split: time quantiles where train ends and where valid ends."
    )
    max_history: int = Field(20, ge=1, description="Most recent items kept in each example's history.")
    num_negatives: int = Field(4, ge=0, description="Sampled negatives per training example.")
    eval_negatives: int = Field(99, ge=0, description="Sampled negatives per validation and test example.")
    hard_negatives: str | None = Field(
        None,
        description="Optional Parquet (user_idx:int64, items:list<int64>) of hard negatives, e.g. from "
        "retrieval; None: random negatives only.",
    )
    num_hard_negatives: int = Field(
        0, ge=0,
        description="Hard negatives that replace random ones in each training example.",
    )
    # Pointing at an existing id_map/ lets reruns keep their ids.
    id_map_from: str | None = Field(
        None,
        description="Where an existing id_map/ lives; None: the output directory.",
    )
    rows_per_partition: int = Field(
        1_000_000, ge=1, description="Target rows per user-hash partition (partitions ~ rows / this)."
    )
    num_partitions: int | None = Field(
        None, ge=1,
        description="Fixed number of partitions, overriding rows_per_partition; None: derived from it.",
    )
    seed: int = Field(0, description="Random seed of preprocessing (negative sampling, random tie order).")
    # MovieLens rates many items in the same second; LlamaRec (and rayrec by default) order them
    # by item id, so a user's held-out item is the highest id of its second, an order a model
    # can learn. "random" is the sensitivity check (issue #24).
    tie_order: Literal["item", "random"] = Field(
        "item", description="Order of one user's interactions with the same timestamp: by item index, or "
        "a seeded random order.")
