"""Row validation and labelling, vectorised with pyarrow compute (no per-row Python on good rows).

``validate`` turns the canonical raw string table into typed rows and a rejects table where
each bad row carries one machine-readable reason (the first check it fails, in this order):
missing_field, bad_user_id, bad_item_id, bad_timestamp, bad_rating, item_not_in_catalog.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.data.sources import RAW_COLUMNS, REJECT_SCHEMA

GOOD_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()),
                         ("timestamp", pa.int64()), ("rating", pa.float32()),
                         ("event", pa.string())])
REASONS = ("wrong_field_count", "bad_encoding", "bad_json", "missing_field", "bad_user_id",
           "bad_item_id", "bad_timestamp", "bad_rating", "item_not_in_catalog")
_INT = r"^[+-]?\d{1,18}$"
_FLOAT = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_TIME_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d")
_MS_THRESHOLD = 10**11  # larger epoch values are milliseconds


def _np(a) -> np.ndarray:
    return np.asarray(a.to_numpy(zero_copy_only=False))


def _blank(a: pa.Array) -> np.ndarray:
    return _np(pc.fill_null(pc.equal(pc.utf8_length(a), 0), True)).astype(bool)


def _matches(a: pa.Array, pattern: str) -> np.ndarray:
    return _np(pc.fill_null(pc.match_substring_regex(a, pattern), False)).astype(bool)


def parse_ids(a: pa.Array, id_type: str) -> tuple[pa.Array, np.ndarray]:
    """(normalised string ids, ok mask). Int ids are rewritten canonically ('007' -> '7')."""
    trimmed = pc.utf8_trim_whitespace(a)
    if id_type == "string":
        return trimmed, ~_blank(trimmed)
    ok = _matches(trimmed, _INT)
    safe = pc.if_else(pa.array(ok), trimmed, pa.scalar("0"))
    return pc.cast(pc.cast(safe, pa.int64()), pa.string()), ok


def parse_timestamps(a: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(unix seconds int64, ok mask): integers, decimals (floored) or ISO-8601 date-times."""
    trimmed = pc.utf8_trim_whitespace(a)
    is_int, is_float = _matches(trimmed, _INT), _matches(trimmed, _FLOAT)
    out = np.zeros(len(a), dtype=np.int64)
    if is_int.any():
        out[is_int] = _np(pc.cast(pc.filter(trimmed, pa.array(is_int)), pa.int64()))
    only_float = is_float & ~is_int
    if only_float.any():
        out[only_float] = np.floor(_np(pc.cast(pc.filter(trimmed, pa.array(only_float)), pa.float64())))
    ok = is_int | is_float
    rest = ~ok & ~_blank(trimmed)
    if rest.any():
        sub = pc.filter(trimmed, pa.array(rest))
        parsed = np.full(len(sub), np.iinfo(np.int64).min, dtype=np.int64)
        for fmt in _TIME_FORMATS:
            t = pc.strptime(sub, format=fmt, unit="s", error_is_null=True)
            vals = _np(pc.fill_null(pc.cast(t, pa.int64()), np.iinfo(np.int64).min))
            todo = parsed == np.iinfo(np.int64).min
            parsed[todo] = vals[todo]
        good = parsed != np.iinfo(np.int64).min
        idx = np.flatnonzero(rest)
        out[idx[good]] = parsed[good]
        ok[idx[good]] = True
    ms = ok & (np.abs(out) >= _MS_THRESHOLD)
    out[ms] //= 1000
    ok &= out >= 0
    return out, ok


def validate(raw: pa.Table, source: str, *, id_type: str = "int", has_rating: bool = True,
             has_event: bool = False, catalog_ids: pa.Array | None = None) -> tuple[pa.Table, pa.Table]:
    """Split the canonical raw table into (typed good rows, rejects with reasons)."""
    n = raw.num_rows
    reason = np.full(n, "", dtype=object)

    def mark(mask: np.ndarray, why: str) -> None:
        reason[mask & (reason == "")] = why

    users, user_ok = parse_ids(raw["user_id"], id_type)
    items, item_ok = parse_ids(raw["item_id"], id_type)
    rating_s = pc.utf8_trim_whitespace(raw["rating"])
    event_s = pc.utf8_trim_whitespace(raw["event"])
    no_rating, no_event = _blank(rating_s), _blank(event_s)
    missing = _blank(pc.utf8_trim_whitespace(raw["user_id"])) | _blank(
        pc.utf8_trim_whitespace(raw["item_id"])) | _blank(pc.utf8_trim_whitespace(raw["timestamp"]))
    if has_rating and has_event:
        missing |= no_rating & no_event
    elif has_rating:
        missing |= no_rating
    elif has_event:
        missing |= no_event
    mark(missing, "missing_field")
    mark(~user_ok, "bad_user_id")
    mark(~item_ok, "bad_item_id")
    ts, ts_ok = parse_timestamps(raw["timestamp"])
    mark(~ts_ok, "bad_timestamp")
    rating = np.full(n, np.nan, dtype=np.float32)
    if has_rating:
        r_ok = _matches(rating_s, _FLOAT)
        mark(~no_rating & ~r_ok, "bad_rating")
        if r_ok.any():
            rating[r_ok] = _np(pc.cast(pc.filter(rating_s, pa.array(r_ok)), pa.float32()))
    if catalog_ids is not None:
        in_cat = _np(pc.is_in(items, value_set=catalog_ids)).astype(bool)
        mark(~in_cat, "item_not_in_catalog")

    good_mask = reason == ""
    good = pa.table({
        "user_id": pc.filter(users, pa.array(good_mask)),
        "item_id": pc.filter(items, pa.array(good_mask)),
        "timestamp": pa.array(ts[good_mask], pa.int64()),
        "rating": pa.array(rating[good_mask], pa.float32(), mask=np.isnan(rating[good_mask])),
        "event": pc.filter(pc.if_else(pa.array(no_event), pa.scalar(None, pa.string()), event_s),
                           pa.array(good_mask)),
    }, schema=GOOD_SCHEMA)
    return good, rejects_for(raw, ~good_mask, reason, source)


def rejects_for(raw: pa.Table, mask: np.ndarray, reason: np.ndarray, source: str) -> pa.Table:
    """The REJECT_COLUMNS rows for the ``mask``-ed raw rows (few: per-row Python is fine)."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return REJECT_SCHEMA.empty_table()
    bad = raw.take(idx)
    cols = [bad[c].to_pylist() for c in RAW_COLUMNS]
    raws = [",".join("" if v is None else v for v in vals) for vals in zip(*cols, strict=True)]
    details = []
    for vals, why in zip(zip(*cols, strict=True), reason[idx], strict=True):
        fields = dict(zip(RAW_COLUMNS, vals, strict=True))
        details.append(_detail(why, fields))
    return pa.table({"source": pa.array([source] * len(idx), pa.string()),
                     "row": bad["_row"], "reason": pa.array(list(reason[idx]), pa.string()),
                     "detail": pa.array(details, pa.string()), "raw": pa.array(raws, pa.string())},
                    schema=REJECT_SCHEMA)


def _detail(why: str, f: dict) -> str:
    if why == "missing_field":
        empty = [k for k in ("user_id", "item_id", "timestamp") if not (f[k] or "").strip()]
        return f"empty: {', '.join(empty) or 'rating/event'}"
    key = {"bad_user_id": "user_id", "bad_item_id": "item_id", "bad_timestamp": "timestamp",
           "bad_rating": "rating", "item_not_in_catalog": "item_id"}.get(why, "")
    return f"{key}={f.get(key)!r}" if key else why


def label(good: pa.Table, rating_threshold: float | None,
          positive_events: Sequence[str]) -> np.ndarray:
    """1 for positives, 0 otherwise: by rating threshold where a rating exists, else by event."""
    rating = _np(pc.fill_null(pc.cast(good["rating"], pa.float64()), np.nan))
    has_rating = ~np.isnan(rating)
    by_rating = np.ones(len(rating), dtype=bool) if rating_threshold is None else rating >= rating_threshold
    by_event = _np(pc.fill_null(pc.is_in(good["event"], value_set=pa.array(list(positive_events),
                                                                           pa.string())), False))
    return np.where(has_rating, by_rating, by_event.astype(bool)).astype(np.int8)


def user_buckets(users: pa.Array, n_buckets: int, id_type: str) -> np.ndarray:
    """A stable hash partition of users into ``n_buckets`` (int32)."""
    if len(users) == 0:
        return np.zeros(0, dtype=np.int32)
    if id_type == "int":
        v = _np(pc.cast(users, pa.int64())).astype(np.uint64)
        h = (v * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(29)
    else:
        h = pd.util.hash_array(_np(users).astype(object))
    return (h % np.uint64(n_buckets)).astype(np.int32)
