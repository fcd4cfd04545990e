"""Readers for a preprocessed dataset (layout in :mod:`rayrec.data.schema`); local or URI."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import ray

from rayrec.data.schema import (
    EXAMPLES_DIR,
    HISTORIES_DIR,
    INTERACTIONS_DIR,
    ITEM_COLUMNS,
    ITEMS_FILE,
    MANIFEST_FILE,
    REJECTS_DIR,
    SCHEMA_VERSION,
    SPLITS,
    USERS_FILE,
)
from rayrec.storage import join, resolve_fs

KINDS = {"interactions": INTERACTIONS_DIR, "examples": EXAMPLES_DIR}


def load_manifest(data_dir: str) -> dict:
    """The dataset's manifest; raises FileNotFoundError when preprocessing has not run."""
    fs, path = resolve_fs(join(data_dir, MANIFEST_FILE))
    try:
        with fs.open_input_stream(path) as f:
            manifest = json.loads(f.read())
    except (FileNotFoundError, OSError) as exc:
        raise FileNotFoundError(f"no preprocessed dataset at {data_dir} (missing {MANIFEST_FILE}); "
                                "run preprocessing first") from exc
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{data_dir}: schema version {manifest.get('schema_version')} != "
                         f"{SCHEMA_VERSION}; rerun preprocessing")
    return manifest


def _read_table(uri: str) -> pd.DataFrame:
    fs, path = resolve_fs(uri)
    return pq.read_table(path, filesystem=fs).to_pandas()


def load_items(data_dir: str) -> pd.DataFrame:
    """ITEM_COLUMNS, one row per item, sorted by item_idx (row i is item i)."""
    df = _read_table(join(data_dir, ITEMS_FILE))
    return df[list(ITEM_COLUMNS)].sort_values("item_idx", ignore_index=True)


def load_users(data_dir: str) -> pd.DataFrame:
    """USER_COLUMNS, sorted by user_idx."""
    return _read_table(join(data_dir, USERS_FILE)).sort_values("user_idx", ignore_index=True)


def load_histories(data_dir: str) -> pd.DataFrame:
    """HISTORY_COLUMNS, one row per user, sorted by user_idx."""
    return _read_table(join(data_dir, HISTORIES_DIR)).sort_values("user_idx", ignore_index=True)


def load_rejects(data_dir: str) -> pd.DataFrame:
    """REJECT_COLUMNS: every input row set aside, with its reason."""
    return _read_table(join(data_dir, REJECTS_DIR))


def _dir(data_dir: str, kind: str, split: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return join(data_dir, KINDS[kind], split)


def read_dataset(data_dir: str, kind: str, split: str) -> ray.data.Dataset:
    """A Ray Dataset over ``<kind>/<split>`` (kind: "interactions" or "examples")."""
    return ray.data.read_parquet(_dir(data_dir, kind, split))


def read_pandas(data_dir: str, kind: str, split: str) -> pd.DataFrame:
    """The same data in one pandas DataFrame (small datasets, evaluation, tests)."""
    return _read_table(_dir(data_dir, kind, split))
