"""Item-id sequences for the retriever, from the preprocessed Parquet.

One row per training window: ``items`` (max_len + 1 consecutive train-split positives of a
user, oldest first) and ``valid_item`` (the held-out validation item on the user's newest
window, -1 on the others and for users without one). A history longer than a window is cut
into windows ending every ``stride`` items from the newest back, the oldest one shorter, so
every transition of a long history is trained on, not only its newest max_len (LlamaRec's
sliding windows); with stride = max_len consecutive windows share one item and each transition
is trained exactly once (ml-latest-small: 610 users -> 892 windows).
Built with Ray Data (group the interactions by user), so the same code reads a laptop's
MovieLens and a cluster's S3 logs; workers turn their shard into padded tensors once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from rayrec.data import store

SEQUENCE_COLUMNS = ["user_idx", "items", "valid_item"]


def window_bounds(n: int, keep: int, stride: int) -> list[tuple[int, int]]:
    """``[start, end)`` of the windows of at most ``keep`` items over an n-item history, newest
    first: ends at n, n - stride, ... down to the window that starts at item 0; windows of
    fewer than 2 items (no transition) are left out. stride 0: the newest window only.

    n=500, keep=201, stride=200: [(299, 500), (99, 300), (0, 100)].
    """
    bounds, end = [], n
    while True:
        start = max(0, end - keep)
        if end - start >= 2 or not bounds:
            bounds.append((start, end))
        if start == 0 or stride <= 0:
            return bounds
        end -= stride


def _user_sequence(group: pd.DataFrame, keep: int, stride: int) -> pd.DataFrame:
    """One user's rows (both splits) -> its window rows. Ties in time: by item (as in
    :func:`load_sequences`, so training and evaluation read the same order)."""
    group = group.sort_values(["timestamp", "item_idx"], kind="stable")
    train = group[group["split"] == 0]["item_idx"].to_numpy(np.int64)
    valid = group[group["split"] == 1]["item_idx"].to_numpy(np.int64)
    bounds = window_bounds(len(train), keep, stride)
    held = [int(valid[0]) if len(valid) else -1] + [-1] * (len(bounds) - 1)
    return pd.DataFrame({"user_idx": int(group["user_idx"].iloc[0]),
                         "items": [train[s:e] for s, e in bounds], "valid_item": held})


def sequence_dataset(data_dir: str, max_len: int, stride: int = 0):
    """Ray Dataset of SEQUENCE_COLUMNS (windows with at least 2 items; see the module doc)."""
    def tag(split: int):
        def add(batch: pd.DataFrame) -> pd.DataFrame:
            batch = batch[batch["label"] > 0][["user_idx", "item_idx", "timestamp"]].copy()
            batch["split"] = split
            return batch
        return add

    train = store.read_dataset(data_dir, "interactions", "train").map_batches(tag(0), batch_format="pandas")
    valid = store.read_dataset(data_dir, "interactions", "valid").map_batches(tag(1), batch_format="pandas")
    # Hash-partition by user into ~1 partition per million events (Ray's default of 200
    # partitions costs minutes of scheduling on a laptop for a 100k-event log).
    n_parts = max(1, min(200, int(np.ceil(train.count() / 1_000_000))))
    seqs = train.union(valid).groupby("user_idx", num_partitions=n_parts).map_groups(
        _user_sequence, fn_kwargs={"keep": max_len + 1, "stride": stride}, batch_format="pandas")
    return seqs.filter(lambda row: len(row["items"]) >= 2)


def load_sequences(data_dir: str, split: str) -> pd.DataFrame:
    """user_idx, history (the model's input for ``split``'s held-out item), target, seen.

    valid: history = train positives, target = valid item. test: history = train + valid,
    target = test item. ``seen`` = the items the user interacted with before the target (what
    full-catalog ranking excludes). Read with pandas: evaluation and mining run on one node.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    parts = [store.read_pandas(data_dir, "interactions", "train").assign(split=0)]
    if split == "test":
        parts.append(store.read_pandas(data_dir, "interactions", "valid").assign(split=1))
    seen = pd.concat(parts, ignore_index=True)
    seen = seen[seen["label"] > 0]
    seen = seen.sort_values(["user_idx", "split", "timestamp", "item_idx"], kind="stable")
    history = seen.groupby("user_idx")["item_idx"].agg(lambda s: s.to_numpy(np.int64))
    held = store.read_pandas(data_dir, "interactions", split)
    held = held[held["label"] > 0].sort_values(["user_idx", "timestamp"], kind="stable")
    held = held.drop_duplicates("user_idx")[["user_idx", "item_idx"]].rename(columns={"item_idx": "target"})
    held = held[held["user_idx"].isin(history.index)]
    out = held.assign(history=[history[u] for u in held["user_idx"]])
    return out.sort_values("user_idx", ignore_index=True)[["user_idx", "history", "target"]]


def pad_left(items, length: int, pad: int) -> np.ndarray:
    """The newest ``length`` items, left-padded with ``pad``."""
    a = np.asarray(items, dtype=np.int64)[-length:]
    return np.concatenate([np.full(length - len(a), pad, dtype=np.int64), a])


def batch_inputs(histories, max_len: int, pad: int) -> torch.Tensor:
    """(B, max_len) model input for a list of histories."""
    if len(histories) == 0:
        return torch.zeros((0, max_len), dtype=torch.long)
    return torch.from_numpy(np.stack([pad_left(h, max_len, pad) for h in histories]))


def training_tensors(items_lists, max_len: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted (inputs, targets): predict items[1:] from items[:-1], one row per sequence."""
    inputs = batch_inputs([np.asarray(s)[:-1] for s in items_lists], max_len, pad)
    targets = batch_inputs([np.asarray(s)[1:] for s in items_lists], max_len, pad)
    return inputs, targets
