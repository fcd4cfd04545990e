"""Stable raw-id -> dense-index maps: append-only across runs, so reruns keep existing ids."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrec.data.schema import ID_MAP_DIR
from rayrec.storage import join, resolve_fs

ID_MAP_SCHEMA = pa.schema([("raw_id", pa.string()), ("idx", pa.int64())])


def sort_ids(ids: pa.Array, id_type: str) -> pa.Array:
    """Deterministic order for new ids: numeric for int ids, lexicographic otherwise."""
    if len(ids) == 0:
        return pa.array([], pa.string())
    if id_type == "int":
        order = np.argsort(np.asarray(pc.cast(ids, pa.int64()).to_numpy()), kind="stable")
    else:
        order = np.asarray(pc.array_sort_indices(ids))
    return ids.take(pa.array(order))


def extend(existing: pa.Array, ids: pa.Array, id_type: str) -> tuple[pa.Array, int]:
    """``existing`` (index i = id i) plus the ids not yet in it, appended in sorted order."""
    ids = pc.unique(ids.cast(pa.string()))
    new = ids.filter(pc.invert(pc.is_in(ids, value_set=existing))) if len(existing) else ids
    new = sort_ids(new, id_type)
    return pa.concat_arrays([existing.cast(pa.string()), new]), len(new)


def lookup(ids: pa.Array, mapping: pa.Array) -> np.ndarray:
    """Dense indexes of ``ids`` in ``mapping`` (-1 where absent)."""
    idx = pc.index_in(ids, value_set=mapping)
    return np.asarray(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False)).astype(np.int64)


def load(data_dir: str, kind: str) -> pa.Array:
    """The saved map for ``kind`` ("users"/"items") as ids in index order; empty if none."""
    fs, path = resolve_fs(join(data_dir, ID_MAP_DIR, f"{kind}.parquet"))
    if fs.get_file_info(path).type != pafs.FileType.File:
        return pa.array([], pa.string())
    table = pq.read_table(path, filesystem=fs).sort_by("idx")
    idx = table["idx"].to_numpy()
    if not np.array_equal(idx, np.arange(len(idx))):
        raise ValueError(f"{path}: id map indexes are not dense 0..n-1")
    return table["raw_id"].combine_chunks().cast(pa.string())


def save(data_dir: str, kind: str, ids: pa.Array) -> None:
    fs, path = resolve_fs(join(data_dir, ID_MAP_DIR))
    fs.create_dir(path, recursive=True)
    table = pa.table({"raw_id": ids, "idx": pa.array(np.arange(len(ids)), pa.int64())},
                     schema=ID_MAP_SCHEMA)
    pq.write_table(table, f"{path}/{kind}.parquet", filesystem=fs)
