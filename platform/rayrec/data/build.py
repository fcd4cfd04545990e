"""The per-partition steps of preprocessing, as pure numpy/pyarrow functions.

The pipeline hash-partitions rows by user, so everything per user (dedup, user counts, the
split, histories, negatives) is local to one partition; only item counts are merged globally.
These functions are also what the unit tests exercise directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.data.text import render_histories

TRAIN, VALID, TEST = 0, 1, 2
DEDUP_KEYS = ("user_id", "item_id", "timestamp", "rating", "event")

INTERACTION_SCHEMA = pa.schema([("user_idx", pa.int64()), ("item_idx", pa.int64()),
                                ("timestamp", pa.int64()), ("label", pa.float32()),
                                ("rating", pa.float32()), ("event", pa.string())])
HISTORY_SCHEMA = pa.schema([("user_idx", pa.int64()), ("history", pa.list_(pa.int64())),
                            ("valid_item", pa.int64()), ("test_item", pa.int64())])
EXAMPLE_SCHEMA = pa.schema([("user_idx", pa.int64()), ("history", pa.list_(pa.int64())),
                            ("history_text", pa.string()), ("candidates", pa.list_(pa.int64())),
                            ("labels", pa.list_(pa.float32())),
                            ("candidate_texts", pa.list_(pa.string())), ("timestamp", pa.int64())])


def _np(a) -> np.ndarray:
    return np.asarray(a.to_numpy(zero_copy_only=False))


def _codes(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Integer codes with equal values -> equal codes (nulls share one code)."""
    if pa.types.is_integer(col.type):
        return np.asarray(pc.fill_null(col, -(2**62)).to_numpy(zero_copy_only=False)).astype(np.int64)
    if pa.types.is_floating(col.type):
        v = np.asarray(pc.fill_null(col, np.nan).to_numpy(zero_copy_only=False)).astype(np.float64)
        return np.where(np.isnan(v), np.inf, v).view(np.int64)
    enc = pc.dictionary_encode(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    return np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False)).astype(np.int64)


def duplicate_mask(table: pa.Table, keys: tuple[str, ...] = DEDUP_KEYS) -> np.ndarray:
    """True for each row equal (on ``keys``) to an earlier row."""
    n = table.num_rows
    if n == 0:
        return np.zeros(0, dtype=bool)
    codes = [_codes(table[k]) for k in keys if k in table.column_names]
    order = np.lexsort(codes[::-1])  # stable: among equal rows the earliest comes first
    same = np.ones(n - 1, dtype=bool)
    for c in codes:
        cs = c[order]
        same &= cs[1:] == cs[:-1]
    dup = np.zeros(n, dtype=bool)
    dup[order[1:][same]] = True
    return dup


def dedup(table: pa.Table) -> tuple[pa.Table, int]:
    """Drop exact duplicate rows (same user, item, timestamp, rating, event), first one kept."""
    dup = duplicate_mask(table)
    if not dup.any():
        return table, 0
    return table.filter(pa.array(~dup)), int(dup.sum())


# ----------------------------------------------------------------------------- k-core


def kcore_round(table: pa.Table, item_keep: pa.Array | None, min_user: int
                ) -> tuple[pa.Array, pa.Table]:
    """One k-core round on a user partition: users with >= min_user positives among kept items.

    Returns (kept user ids, positive counts per kept item among kept users' rows).
    """
    pos = pc.equal(table["label"], 1)
    if item_keep is not None:
        pos = pc.and_(pos, pc.is_in(table["item_id"], value_set=item_keep))
    rows = table.select(["user_id", "item_id"]).filter(pos)
    users = rows.group_by("user_id").aggregate([("item_id", "count")])
    kept_users = users.filter(pc.greater_equal(users["item_id_count"], min_user))["user_id"]
    rows = rows.filter(pc.is_in(rows["user_id"], value_set=kept_users))
    counts = rows.group_by("item_id").aggregate([("user_id", "count")])
    return kept_users.combine_chunks(), counts.rename_columns(["item_id", "count"])


def merge_item_counts(parts: list[pa.Table], min_item: int) -> tuple[pa.Array, pa.Table]:
    """Sum per-partition item counts; (items with >= min_item positives, the summed counts)."""
    total = pa.concat_tables(parts).group_by("item_id").aggregate([("count", "sum")])
    total = total.rename_columns(["item_id", "count"])
    return total.filter(pc.greater_equal(total["count"], min_item))["item_id"].combine_chunks(), total


def kcore_fixed_point(run_round: Callable[[pa.Array | None], list[tuple[pa.Array, pa.Table]]],
                      min_item: int, max_rounds: int = 100) -> tuple[list[pa.Array], pa.Array, int]:
    """Iterate k-core rounds until the kept item set stops shrinking.

    ``run_round(item_keep)`` runs :func:`kcore_round` on every partition (None: all items).
    Returns (kept users per partition, kept items, rounds run).
    """
    item_keep: pa.Array | None = None
    for r in range(1, max_rounds + 1):
        results = run_round(item_keep)
        new_keep, _ = merge_item_counts([c for _, c in results], min_item)
        if item_keep is not None and len(new_keep) == len(item_keep):
            return [u for u, _ in results], item_keep, r
        item_keep = new_keep
    raise RuntimeError(f"k-core did not converge in {max_rounds} rounds")


def kcore_filter(table: pa.Table, min_user: int, min_item: int) -> tuple[pa.Array, pa.Array, int]:
    """Single-partition k-core to a fixed point: (kept users, kept items, rounds)."""
    users, items, rounds = kcore_fixed_point(
        lambda keep: [kcore_round(table, keep, min_user)], min_item)
    return users[0], items, rounds


# ----------------------------------------------------------------------------- splits


def _group_starts(sorted_users: np.ndarray) -> np.ndarray:
    """Index of the first row of each row's user (rows sorted by user)."""
    n = len(sorted_users)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.r_[True, sorted_users[1:] != sorted_users[:-1]]
    return np.maximum.accumulate(np.where(new, np.arange(n), 0))


def split_leave_last_out(users: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Split codes for rows sorted by (user, time): last positive test, the one before valid.

    Users with two positives get no valid item, with one only train. Non-positive rows go to
    the split of the time window they fall in, so no train row comes after valid/test.
    """
    n = len(users)
    pos = labels == 1
    starts = _group_starts(users)
    cum = np.cumsum(pos)
    before = cum - pos - np.where(starts > 0, cum[starts - 1], 0)  # positives before this row
    uniq, first, counts = np.unique(users, return_index=True, return_counts=True)
    n_pos = np.add.reduceat(pos.astype(np.int64), first) if n else np.zeros(0, np.int64)
    row_npos = np.repeat(n_pos, counts)
    split = np.full(n, TRAIN, dtype=np.int8)
    has_valid = row_npos >= 3
    has_test = row_npos >= 2
    # positives: rank from the end
    after = row_npos - before - pos  # positives strictly after this row
    split[pos & has_test & (after == 0)] = TEST
    split[pos & has_valid & (after == 1)] = VALID
    # non-positives: the window they fall into, by position in the user's time order
    neg = ~pos
    split[neg & has_test & (after == 0) & (before == row_npos)] = TEST
    split[neg & has_valid & (after == 1) & (before == row_npos - 1)] = VALID
    return split


def split_global_time(timestamps: np.ndarray, cuts: tuple[int, int]) -> np.ndarray:
    """Train before cuts[0], valid in [cuts[0], cuts[1]), test from cuts[1] on."""
    split = np.full(len(timestamps), TRAIN, dtype=np.int8)
    split[timestamps >= cuts[0]] = VALID
    split[timestamps >= cuts[1]] = TEST
    return split


# ----------------------------------------------------------------------------- histories


def previous_positives(users: np.ndarray, items: np.ndarray, max_history: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """For positives sorted by (user, time): (offsets, values) of the <= max_history items before
    each one, oldest first, as a list array's offsets and flat values."""
    n = len(users)
    starts = _group_starts(users)
    pos_in_user = np.arange(n) - starts
    lengths = np.minimum(pos_in_user, max_history)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    first = np.arange(n) - lengths
    flat = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths) + np.repeat(first, lengths)
    return offsets, items[flat]


def user_histories(users: np.ndarray, items: np.ndarray, split: np.ndarray, max_history: int
                   ) -> pa.Table:
    """HISTORY_COLUMNS for positives sorted by (user, time) with their split codes."""
    if len(users) == 0:
        return HISTORY_SCHEMA.empty_table()
    uniq, first, counts = np.unique(users, return_index=True, return_counts=True)
    train = split == TRAIN
    tr_users, tr_items = users[train], items[train]
    # last max_history train positives per user
    t_uniq, t_first, t_counts = np.unique(tr_users, return_index=True, return_counts=True)
    t_len = np.minimum(t_counts, max_history)
    t_start = t_first + t_counts - t_len
    per_user_len = np.zeros(len(uniq), dtype=np.int64)
    per_user_start = np.zeros(len(uniq), dtype=np.int64)
    where = np.searchsorted(uniq, t_uniq)
    per_user_len[where], per_user_start[where] = t_len, t_start
    offsets = np.zeros(len(uniq) + 1, dtype=np.int64)
    np.cumsum(per_user_len, out=offsets[1:])
    flat = np.arange(offsets[-1]) - np.repeat(offsets[:-1], per_user_len) + np.repeat(per_user_start, per_user_len)
    history = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(tr_items[flat], pa.int64()))
    return pa.table({"user_idx": pa.array(uniq, pa.int64()), "history": history,
                     "valid_item": pa.array(_first_of(uniq, users, items, split == VALID), pa.int64()),
                     "test_item": pa.array(_first_of(uniq, users, items, split == TEST), pa.int64())},
                    schema=HISTORY_SCHEMA)


def _first_of(uniq: np.ndarray, users: np.ndarray, items: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.full(len(uniq), -1, dtype=np.int64)
    u, first = np.unique(users[mask], return_index=True)
    out[np.searchsorted(uniq, u)] = items[mask][first]
    return out


# ----------------------------------------------------------------------------- negatives


def sample_negatives(users: np.ndarray, k: int, n_items: int, interacted: np.ndarray,
                     rng: np.random.Generator, hard: Mapping[int, np.ndarray] | None = None,
                     n_hard: int = 0, max_rounds: int = 64) -> list[np.ndarray]:
    """k distinct negatives per row, none in the user's ``interacted`` items.

    ``interacted`` holds sorted keys ``user * n_items + item``. Up to ``n_hard`` of each user's
    ``hard`` negatives (e.g. retrieved but never interacted) come first. A row gets fewer than
    k only when the user has interacted with nearly every item.
    """
    n = len(users)
    if k == 0 or n == 0:
        return [np.zeros(0, dtype=np.int64)] * n
    users = users.astype(np.int64)
    cand = rng.integers(0, n_items, size=(n, k), dtype=np.int64)
    locked = np.zeros((n, k), dtype=bool)
    if hard and n_hard:
        for r in np.flatnonzero(np.isin(users, np.fromiter(hard.keys(), dtype=np.int64))):
            h = np.unique(np.asarray(hard[int(users[r])], dtype=np.int64))
            h = h[(h >= 0) & (h < n_items) & ~_in_sorted(users[r] * n_items + h, interacted)]
            h = h[: min(n_hard, k)]
            cand[r, : len(h)], locked[r, : len(h)] = h, True
    keys_user = users[:, None] * n_items
    todo = np.arange(n)
    for _ in range(max_rounds):
        c, lk = cand[todo], locked[todo]
        bad = _in_sorted(keys_user[todo] + c, interacted) & ~lk
        # in each run of equal values keep one (a locked one if any), re-draw the others
        order = np.lexsort((~lk, c), axis=1)
        srt = np.take_along_axis(c, order, axis=1)
        later = np.zeros_like(bad)
        later[:, 1:] = srt[:, 1:] == srt[:, :-1]
        dup = np.zeros_like(bad)
        np.put_along_axis(dup, order, later, axis=1)
        bad |= dup & ~lk
        rows_bad = bad.any(axis=1)
        if not rows_bad.any():
            return list(cand)
        r, col = np.nonzero(bad)
        cand[todo[r], col] = rng.integers(0, n_items, size=len(r), dtype=np.int64)
        todo = todo[rows_bad]
    # users with few items left: draw exactly from what remains
    out = list(cand)
    bad_rows = np.unique(np.nonzero(_in_sorted(keys_user + cand, interacted) & ~locked)[0])
    for r in np.r_[bad_rows, _rows_with_dups(cand)].astype(np.int64):
        seen = interacted[(interacted >= users[r] * n_items) & (interacted < (users[r] + 1) * n_items)]
        free = np.setdiff1d(np.arange(n_items), seen - users[r] * n_items)
        hard_part = cand[r][locked[r]]
        free = np.setdiff1d(free, hard_part)
        extra = rng.choice(free, size=min(k - len(hard_part), len(free)), replace=False)
        out[r] = np.r_[hard_part, extra].astype(np.int64)
    return out


def _rows_with_dups(cand: np.ndarray) -> np.ndarray:
    s = np.sort(cand, axis=1)
    return np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))


def _in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(keys.shape, dtype=bool)
    i = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    return sorted_keys[i] == keys


# ----------------------------------------------------------------------------- examples


def build_examples(users: np.ndarray, targets: np.ndarray, timestamps: np.ndarray,
                   history: pa.Array, negatives: list[np.ndarray], item_texts: pa.Array
                   ) -> pa.Table:
    """EXAMPLE_COLUMNS: the positive first, then its negatives; texts looked up vectorised.

    ``history`` is a list<int64> array (items before each target, oldest first).
    """
    n = len(users)
    neg_len = np.fromiter((len(x) for x in negatives), dtype=np.int64, count=n)
    cand_len = neg_len + 1
    cand_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(cand_len, out=cand_off[1:])
    flat = np.empty(cand_off[-1], dtype=np.int64)
    flat[cand_off[:-1]] = targets
    is_pos = np.zeros(cand_off[-1], dtype=bool)
    is_pos[cand_off[:-1]] = True
    if n:
        flat[~is_pos] = np.concatenate(negatives) if neg_len.sum() else np.zeros(0, np.int64)
    off = pa.array(cand_off, pa.int64())
    candidates = pa.LargeListArray.from_arrays(off, pa.array(flat, pa.int64())).cast(pa.list_(pa.int64()))
    labels = pa.LargeListArray.from_arrays(off, pa.array(is_pos.astype(np.float32))).cast(
        pa.list_(pa.float32()))
    cand_texts = pa.LargeListArray.from_arrays(off, item_texts.take(pa.array(flat))).cast(
        pa.list_(pa.string()))
    h_len = np.asarray(pc.list_value_length(history).to_numpy(zero_copy_only=False), dtype=np.int64)
    h_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(h_len, out=h_off[1:])
    h_val = pc.list_flatten(history)
    history = pa.LargeListArray.from_arrays(pa.array(h_off), h_val).cast(pa.list_(pa.int64()))
    hist_texts = pa.LargeListArray.from_arrays(pa.array(h_off), item_texts.take(h_val))
    return pa.table({"user_idx": pa.array(users, pa.int64()), "history": history,
                     "history_text": render_histories(hist_texts).cast(pa.string()),
                     "candidates": candidates, "labels": labels, "candidate_texts": cand_texts,
                     "timestamp": pa.array(timestamps, pa.int64())}, schema=EXAMPLE_SCHEMA)
