"""The preprocessing pipeline: raw interaction log -> the Parquet dataset of ``rayrec.data.schema``.

Stages (nothing row-level ever passes through the driver):

1. ingest (Ray Data, streaming): read chunks -> validate -> label -> hash users into partitions,
   written as ``_work/ingest/_bucket=<p>/`` (rejects go to partition -1 with their reason);
2. per user partition (one Ray task each): dedup, then k-core rounds; only per-item positive
   counts are merged in the driver, iterated until the item set stops shrinking (fixed point);
3. the driver extends the stable id maps (O(users + items) ids, no rows);
4. per user partition: map ids, sort by time, split, histories, negatives, text -> Parquet;
5. items, users, rejects, id maps and ``manifest.json`` with the balanced row accounting.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from rayrec.config import RayrecConfig
from rayrec.data import build, idmap
from rayrec.data.schema import (
    EXAMPLES_DIR,
    HISTORIES_DIR,
    INTERACTIONS_DIR,
    ITEMS_FILE,
    MANIFEST_FILE,
    REJECT_COLUMNS,
    REJECTS_DIR,
    SCHEMA_VERSION,
    SPLITS,
    USERS_FILE,
    WORLD_DIR,
)
from rayrec.data.sources import REJECT_SCHEMA, SourcePlan, detect_kind, plan_source, read_chunk
from rayrec.data.synthetic import generate_event_log, synthetic_data_config
from rayrec.data.validate import GOOD_SCHEMA, label, user_buckets, validate
from rayrec.data.world import SyntheticWorld
from rayrec.errors import DataError
from rayrec.runtime import init_ray
from rayrec.storage import join, resolve_fs

log = logging.getLogger(__name__)

WORK_DIR = "_work"
BUCKET_COL = "_bucket"
EXAMPLE_SLICE = 50_000  # examples built and written per row group (bounds task memory)
GOOD_COLUMNS = (*GOOD_SCHEMA.names, "label")
UNIFIED_SCHEMA = pa.schema([*GOOD_SCHEMA, ("label", pa.int8()), (BUCKET_COL, pa.int32()),
                            *REJECT_SCHEMA])


@dataclass(frozen=True)
class _Ctx:
    """What every partition task needs (small; the big arrays travel as object refs)."""

    out: str
    work: str
    n_buckets: int
    id_type: str
    min_user: int
    min_item: int
    split: str
    max_history: int
    num_negatives: int
    eval_negatives: int
    num_hard_negatives: int
    seed: int
    cut_quantiles: tuple[float, float] = (0.8, 0.9)
    tie_order: str = "item"


class _Laps:
    """Seconds per named step, each from the end of the previous one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._clock, 3)
        self._clock = now


@dataclass
class _Kept:
    """What the partition steps leave: per bucket its users, the items kept, and the counts."""

    bucket_users: list[pa.Array]
    item_keep: pa.Array
    rounds: int
    n_good: int
    n_dup: int
    rejected: dict[str, int]


def run_preprocess(cfg: RayrecConfig) -> dict:
    """Preprocess ``cfg.data`` into ``cfg.data_dir``; returns the manifest (also written).

    Steps: source (the synthetic log when asked) → plan → ingest + rejects → dedup → k-core
    → id maps → build (per partition) → finalize (items, users, maps) → manifest."""
    init_ray(cfg.ray)
    pre, out, laps = cfg.preprocess, cfg.data_dir, _Laps()
    data_cfg, kind = _source(cfg, out, laps)
    plan = plan_source(data_cfg)
    n_buckets = pre.num_partitions or max(2, math.ceil(plan.est_rows / pre.rows_per_partition))
    map_dir = pre.id_map_from or out
    prev_users, prev_items = idmap.load(map_dir, "users"), idmap.load(map_dir, "items")
    prev_item_table = _load_items_if_any(map_dir)
    _clean(out)
    ctx = _Ctx(out, join(out, WORK_DIR), n_buckets, plan.id_type, pre.min_user_interactions,
               pre.min_item_interactions, pre.split, pre.max_history, pre.num_negatives,
               pre.eval_negatives, pre.num_hard_negatives, pre.seed,
               tuple(pre.global_cut_quantiles), pre.tie_order)
    laps("plan")

    ctx_ref = ray.put(ctx)
    kept = _partition(plan, cfg, ctx, ctx_ref, laps)
    user_map, n_new_users = idmap.extend(prev_users, pa.concat_arrays(kept.bucket_users), plan.id_type)
    item_map, n_new_items = idmap.extend(prev_items, kept.item_keep, plan.id_type)
    items = _item_table(item_map, plan.catalog, prev_item_table)
    cuts = _global_cuts(ctx_ref, ctx, kept.bucket_users, kept.item_keep) if pre.split == "global_time" else None
    hard = _load_hard_negatives(pre.hard_negatives) if pre.hard_negatives else None
    keep_ref = ray.put(kept.item_keep)
    maps_ref = ray.put((user_map, item_map, items["text"].combine_chunks(), hard))
    laps("id_map")

    built = ray.get([_build_task.remote(ctx_ref, b, kept.bucket_users[b], keep_ref, maps_ref, cuts)
                     for b in range(n_buckets)])
    laps("build")
    _finalize(out, built, items, user_map, item_map)
    laps("finalize")

    manifest = _manifest(cfg, data_cfg, kind or plan.kind, plan, kept, built, cuts, laps.seconds,
                         {"users_in_map": len(user_map), "items_in_map": len(item_map),
                          "new_users": n_new_users, "new_items": n_new_items, "partitions": n_buckets})
    fs, root = resolve_fs(out)
    with fs.open_output_stream(f"{root}/{MANIFEST_FILE}") as f:
        f.write(json.dumps(manifest, indent=2).encode())
    return manifest


def _source(cfg: RayrecConfig, out: str, laps: _Laps):
    """The data config to read: ``cfg.data``, or for synthetic data the event log (and the
    world's ground truth) generated under ``<out>/raw`` first. Returns (data config, kind)."""
    if cfg.data.source == "synthetic" or (cfg.data.source == "auto" and cfg.data.path is None):
        raw = join(out, "raw")
        generate_event_log(cfg.data.synthetic, raw)
        SyntheticWorld.generate(cfg.data.synthetic).save(join(out, WORLD_DIR))
        laps("generate")
        return synthetic_data_config(cfg.data, raw), "synthetic"
    return cfg.data, None


def _partition(plan: SourcePlan, cfg: RayrecConfig, ctx: _Ctx, ctx_ref, laps: _Laps) -> _Kept:
    """Ingest into user partitions, write the rejects, dedup per partition, then k-core rounds
    to the fixed point; raises DataError when nothing survives."""
    _ingest(plan, cfg, ctx)
    laps("ingest")
    rejected = _write_rejects(ctx)
    laps("rejects")
    first = ray.get([_dedup_task.remote(ctx_ref, b) for b in range(ctx.n_buckets)])
    n_good, n_dup = sum(r["n_in"] for r in first), sum(r["n_dup"] for r in first)
    laps("dedup")

    def run_round(item_keep: pa.Array | None) -> list[tuple[pa.Array, pa.Table]]:
        if item_keep is None:  # the first round ran inside the dedup tasks
            return [(r["users"], r["counts"]) for r in first]
        keep_ref = ray.put(item_keep)
        return ray.get([_kcore_task.remote(ctx_ref, b, keep_ref) for b in range(ctx.n_buckets)])

    bucket_users, item_keep, rounds = build.kcore_fixed_point(run_round, ctx.min_item)
    if sum(len(u) for u in bucket_users) == 0 or len(item_keep) == 0:
        raise DataError(f"{plan.root}: no user has >= {ctx.min_user} positives on items with >= "
                        f"{ctx.min_item} positives ({n_good - n_dup} valid rows after dedup)")
    laps("kcore")
    return _Kept(bucket_users, item_keep, rounds, n_good, n_dup, rejected)


def _finalize(out: str, built: list[dict], items: pa.Table, user_map: pa.Array, item_map: pa.Array) -> None:
    """items.parquet (with train popularity), users.parquet, the id maps; the work dir removed."""
    popularity = np.sum([r["popularity"] for r in built], axis=0)
    items = items.set_column(items.schema.get_field_index("popularity"), "popularity",
                             pa.array(popularity, pa.int64()))
    n_train = np.zeros(len(user_map), dtype=np.int64)
    for r in built:
        n_train[r["user_idx"]] = r["n_train"]
    users = pa.table({"user_idx": pa.array(np.arange(len(user_map)), pa.int64()), "user_id": user_map,
                      "n_train": pa.array(n_train, pa.int64())})
    fs, root = resolve_fs(out)
    pq.write_table(items, f"{root}/{ITEMS_FILE}", filesystem=fs)
    pq.write_table(users, f"{root}/{USERS_FILE}", filesystem=fs)
    idmap.save(out, "users", user_map)
    idmap.save(out, "items", item_map)
    fs.delete_dir_contents(f"{root}/{WORK_DIR}", missing_dir_ok=True)
    fs.delete_dir(f"{root}/{WORK_DIR}")


def _manifest(cfg: RayrecConfig, data_cfg, kind: str, plan: SourcePlan, kept: _Kept, built: list[dict],
              cuts, timings: dict[str, float], maps: dict[str, int]) -> dict[str, Any]:
    """The manifest, with the row accounting that must balance:
    rows_read = rows_kept + rows_rejected + duplicates_removed + rows_filtered."""
    def total(key: str) -> dict[str, int]:
        return {s: int(sum(r[key][s] for r in built)) for s in SPLITS}

    interactions = total("interactions")
    filtered = {"kcore_user": int(sum(r["filtered_user"] for r in built)),
                "kcore_item": int(sum(r["filtered_item"] for r in built))}
    n_rejected = int(sum(kept.rejected.values()))
    rows_read = kept.n_good + n_rejected
    rows_kept = int(sum(interactions.values()))
    balanced = rows_read == rows_kept + n_rejected + kept.n_dup + sum(filtered.values())
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"kind": kind, "path": data_cfg.path, "files": plan.files,
                   "chunks": len(plan.chunks), "extra_columns": plan.extra_columns,
                   "catalog_items": 0 if plan.catalog is None else plan.catalog.num_rows},
        "config": cfg.model_dump(mode="json"),
        "counts": {
            "rows_read": rows_read, "rows_rejected": n_rejected, "rejected_by_reason": kept.rejected,
            "duplicates_removed": int(kept.n_dup), "filtered_by_reason": filtered,
            "rows_kept": rows_kept, "interactions": interactions, "positives": total("positives"),
            "examples": total("examples"), "users": sum(len(u) for u in kept.bucket_users),
            "items": len(kept.item_keep), "users_in_map": maps["users_in_map"],
            "items_in_map": maps["items_in_map"], "new_users": maps["new_users"],
            "new_items": maps["new_items"], "kcore_rounds": kept.rounds, "partitions": maps["partitions"],
        },
        "accounting": {
            "equation": "rows_read = rows_kept + rows_rejected + duplicates_removed + rows_filtered",
            "rows_read": rows_read, "rows_kept": rows_kept, "rows_rejected": n_rejected,
            "duplicates_removed": int(kept.n_dup), "rows_filtered": int(sum(filtered.values())),
            "balanced": bool(balanced),
        },
        "split": {"method": cfg.preprocess.split, "global_cuts": list(cuts) if cuts else None},
        "timings_s": timings,
    }
    if not balanced:
        raise RuntimeError(f"row accounting does not balance: {manifest['accounting']}")
    return manifest


# ----------------------------------------------------------------------------- stage 1: ingest


def _ingest(plan: SourcePlan, cfg: RayrecConfig, ctx: _Ctx) -> None:
    """Ray Data: read -> validate -> label -> partition by user hash, written as Parquet."""
    chunks_ref = ray.put(plan.chunks)
    catalog_ref = ray.put(None if plan.catalog is None else plan.catalog["item_id"].combine_chunks())
    threshold, events = cfg.preprocess.rating_threshold, tuple(cfg.preprocess.positive_events)
    id_type, has_rating, has_event = plan.id_type, plan.has_rating, plan.has_event
    n_buckets = ctx.n_buckets

    def ingest(batch: dict[str, np.ndarray]) -> pa.Table:
        chunks, catalog_ids = ray.get(chunks_ref), ray.get(catalog_ref)
        parts = []
        for i in batch["chunk"]:
            chunk = chunks[int(i)]
            raw, read_rejects = read_chunk(chunk)
            good, rejects = validate(raw, chunk.source, id_type=id_type, has_rating=has_rating,
                                     has_event=has_event, catalog_ids=catalog_ids)
            parts.append(_unified(good, label(good, threshold, events),
                                  user_buckets(good["user_id"], n_buckets, id_type)))
            parts.append(_unified_rejects(pa.concat_tables([read_rejects, rejects])))
        return pa.concat_tables(parts)

    ds = ray.data.from_items([{"chunk": i} for i in range(len(plan.chunks))],
                             override_num_blocks=max(1, len(plan.chunks)))
    ds = ds.map_batches(ingest, batch_size=1, batch_format="numpy", num_cpus=1)
    try:
        ds.write_parquet(join(ctx.work, "ingest"), partition_cols=[BUCKET_COL])
    except Exception as exc:
        raise _data_error(exc) from None


def _unified(good: pa.Table, labels: np.ndarray, buckets: np.ndarray) -> pa.Table:
    n = good.num_rows
    cols = [*good.columns, pa.array(labels, pa.int8()), pa.array(buckets, pa.int32())]
    cols += [pa.nulls(n, f.type) for f in REJECT_SCHEMA]
    return pa.Table.from_arrays(cols, schema=UNIFIED_SCHEMA)


def _unified_rejects(rejects: pa.Table) -> pa.Table:
    n = rejects.num_rows
    cols = [pa.nulls(n, f.type) for f in GOOD_SCHEMA] + [pa.nulls(n, pa.int8()),
                                                         pa.array(np.full(n, -1, np.int32))]
    return pa.Table.from_arrays(cols + list(rejects.columns), schema=UNIFIED_SCHEMA)


def _data_error(exc: BaseException) -> DataError:
    """The DataError a worker raised (Ray wraps it), else one carrying the worker's message."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DataError):
            return DataError(str(seen))
        cause = getattr(seen, "cause", None)
        if isinstance(cause, DataError):
            return DataError(str(cause))
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    marker = "DataError: "
    if marker in text:
        return DataError(text.split(marker, 1)[1].strip().splitlines()[0])
    return DataError(f"reading the input failed: {text}")


def _write_rejects(ctx: _Ctx) -> dict[str, int]:
    """Copy partition -1 (every rejected row with its reason) to ``rejects/``; counts per reason."""
    fs, src = resolve_fs(join(ctx.work, "ingest", f"{BUCKET_COL}=-1"))
    _, dst = resolve_fs(join(ctx.out, REJECTS_DIR))
    fs.create_dir(dst, recursive=True)
    if fs.get_file_info(src).type != pafs.FileType.Directory:
        pq.write_table(REJECT_SCHEMA.empty_table(), f"{dst}/part-00000.parquet", filesystem=fs)
        return {}
    counts: dict[str, int] = {}
    # streamed batch by batch: a mostly-malformed input must not land in driver memory at once
    with pq.ParquetWriter(f"{dst}/part-00000.parquet", REJECT_SCHEMA, filesystem=fs) as writer:
        for batch in pads.dataset(src, filesystem=fs, format="parquet").to_batches(
                columns=list(REJECT_COLUMNS), batch_size=100_000):
            table = pa.Table.from_batches([batch]).cast(REJECT_SCHEMA)
            writer.write_table(table)
            for reason, n in zip(*pc.value_counts(table["reason"]).flatten(), strict=True):
                counts[reason.as_py()] = counts.get(reason.as_py(), 0) + n.as_py()
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- stage 2: dedup, k-core


def _read_good(ctx: _Ctx, b: int) -> pa.Table:
    fs, path = resolve_fs(join(ctx.work, "ingest", f"{BUCKET_COL}={b}"))
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return pa.schema([*GOOD_SCHEMA, ("label", pa.int8())]).empty_table()
    return pq.read_table(path, filesystem=fs, columns=list(GOOD_COLUMNS))


def _dedup_path(ctx: _Ctx, b: int) -> tuple[pafs.FileSystem, str]:
    fs, path = resolve_fs(join(ctx.work, "dedup"))
    fs.create_dir(path, recursive=True)
    return fs, f"{path}/part-{b:05d}.parquet"


@ray.remote(num_cpus=1)
def _dedup_task(ctx: _Ctx, b: int) -> dict:
    table = _read_good(ctx, b)
    n_in = table.num_rows
    table, n_dup = build.dedup(table)
    fs, path = _dedup_path(ctx, b)
    pq.write_table(table, path, filesystem=fs)
    users, counts = build.kcore_round(table, None, ctx.min_user)
    return {"n_in": n_in, "n_dup": n_dup, "users": users, "counts": counts}


def _read_dedup(ctx: _Ctx, b: int, columns: list[str] | None = None) -> pa.Table:
    fs, path = _dedup_path(ctx, b)
    return pq.read_table(path, filesystem=fs, columns=columns)


@ray.remote(num_cpus=1)
def _kcore_task(ctx: _Ctx, b: int, item_keep: pa.Array) -> tuple[pa.Array, pa.Table]:
    table = _read_dedup(ctx, b, ["user_id", "item_id", "label"])
    return build.kcore_round(table, item_keep, ctx.min_user)


@ray.remote(num_cpus=1)
def _ts_sample_task(ctx: _Ctx, b: int, users: pa.Array, item_keep: pa.Array) -> tuple[np.ndarray, int]:
    t = _read_dedup(ctx, b, ["user_id", "item_id", "timestamp", "label"])
    mask = pc.and_(pc.and_(pc.is_in(t["user_id"], value_set=users),
                           pc.is_in(t["item_id"], value_set=item_keep)), pc.equal(t["label"], 1))
    ts = np.asarray(t["timestamp"].filter(mask).to_numpy())
    rng = np.random.default_rng([ctx.seed, b])
    sample = rng.choice(ts, size=min(len(ts), 50_000), replace=False) if len(ts) else ts
    return np.sort(sample), len(ts)


def _global_cuts(ctx_ref, ctx: _Ctx, bucket_users: list[pa.Array], item_keep: pa.Array
                 ) -> tuple[int, int]:
    """Timestamps at the configured quantiles of kept positives (weighted per-partition samples)."""
    keep_ref = ray.put(item_keep)
    parts = ray.get([_ts_sample_task.remote(ctx_ref, b, bucket_users[b], keep_ref)
                     for b in range(ctx.n_buckets)])
    values = np.concatenate([s for s, _ in parts])
    weights = np.concatenate([np.full(len(s), n / max(len(s), 1)) for s, n in parts])
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order]) / weights.sum()
    sorted_values = values[order]
    lo, hi = (int(sorted_values[min(np.searchsorted(cum, q), len(cum) - 1)])
              for q in ctx.cut_quantiles)
    return lo, hi


# ----------------------------------------------------------------------------- stage 4: build


def _write(table: pa.Table, uri: str) -> None:
    fs, path = resolve_fs(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)


def _tie_key(uidx: np.ndarray, iidx: np.ndarray, ctx: _Ctx) -> np.ndarray:
    """The order of one user's interactions within the same timestamp: by item index (as
    LlamaRec orders MovieLens: the held-out item is the highest id of its second), or
    ``random``: a seeded hash of (user, item, seed), the same in every partition and run."""
    if ctx.tie_order == "item":
        return iidx
    x = (uidx.astype(np.uint64) << np.uint64(32)) ^ iidx.astype(np.uint64) ^ np.uint64(ctx.seed * 0x9E3779B1 % 2**32)
    with np.errstate(over="ignore"):  # splitmix64's finaliser: wraps by design
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@ray.remote(num_cpus=1)
def _build_task(ctx: _Ctx, b: int, users_b: pa.Array, item_keep: pa.Array, maps: tuple,
                cuts: tuple[int, int] | None) -> dict:
    user_map, item_map, item_texts, hard = maps
    n_items = len(item_map)
    t = _read_dedup(ctx, b)
    user_ok = np.asarray(pc.is_in(t["user_id"], value_set=users_b).to_numpy(zero_copy_only=False))
    item_ok = np.asarray(pc.is_in(t["item_id"], value_set=item_keep).to_numpy(zero_copy_only=False))
    keep = user_ok & item_ok
    t = t.filter(pa.array(keep))
    uidx = idmap.lookup(t["user_id"], user_map)
    iidx = idmap.lookup(t["item_id"], item_map)
    ts = np.asarray(t["timestamp"].to_numpy())
    order = np.lexsort((_tie_key(uidx, iidx, ctx), ts, uidx))
    uidx, iidx, ts = uidx[order], iidx[order], ts[order]
    labels = np.asarray(t["label"].to_numpy())[order]
    rating = np.asarray(pc.fill_null(pc.cast(t["rating"], pa.float32()), np.nan).to_numpy(
        zero_copy_only=False))[order]
    # sources without an event column (MovieLens) get "rating"
    event = pc.coalesce(t["event"], pc.if_else(pc.is_valid(t["rating"]), "rating", "")).take(
        pa.array(order))
    split = (build.split_leave_last_out(uidx, labels) if ctx.split == "leave_last_out"
             else build.split_global_time(ts, cuts))

    stats: dict[str, Any] = {"filtered_user": int((~user_ok).sum()),
                             "filtered_item": int((user_ok & ~item_ok).sum()),
                             "interactions": {}, "positives": {}, "examples": {}}
    for code, name in enumerate(SPLITS):
        m = split == code
        stats["interactions"][name] = int(m.sum())
        stats["positives"][name] = int((m & (labels == 1)).sum())
        inter = pa.table({"user_idx": uidx[m], "item_idx": iidx[m], "timestamp": ts[m],
                          "label": labels[m].astype(np.float32), "rating": rating[m],
                          "event": event.filter(pa.array(m))}, schema=build.INTERACTION_SCHEMA)
        _write(inter, join(ctx.out, INTERACTIONS_DIR, name, f"part-{b:05d}.parquet"))

    pos = labels == 1
    p_user, p_item, p_ts, p_split = uidx[pos], iidx[pos], ts[pos], split[pos]
    _write(build.user_histories(p_user, p_item, p_split, ctx.max_history),
           join(ctx.out, HISTORIES_DIR, f"part-{b:05d}.parquet"))
    h_off, h_val = build.previous_positives(p_user, p_item, ctx.max_history)
    history = pa.LargeListArray.from_arrays(pa.array(h_off, pa.int64()), pa.array(h_val, pa.int64()))
    interacted = np.sort(uidx * n_items + iidx)
    interacted = interacted[np.r_[True, interacted[1:] != interacted[:-1]]] if len(interacted) else interacted
    for code, name in enumerate(SPLITS):
        rows = np.flatnonzero(p_split == code)
        k = ctx.num_negatives if code == 0 else ctx.eval_negatives
        rng = np.random.default_rng([ctx.seed, b, code])
        fs, path = resolve_fs(join(ctx.out, EXAMPLES_DIR, name, f"part-{b:05d}.parquet"))
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with pq.ParquetWriter(path, build.EXAMPLE_SCHEMA, filesystem=fs) as writer:
            for a in range(0, max(len(rows), 1), EXAMPLE_SLICE):
                r = rows[a:a + EXAMPLE_SLICE]
                negs = build.sample_negatives(
                    p_user[r], k, n_items, interacted, rng,
                    hard=hard if code == 0 else None, n_hard=ctx.num_hard_negatives)
                writer.write_table(build.build_examples(
                    p_user[r], p_item[r], p_ts[r], history.take(pa.array(r, pa.int64())), negs,
                    item_texts))
        stats["examples"][name] = len(rows)

    train_pos = p_split == 0
    stats["popularity"] = np.bincount(p_item[train_pos], minlength=n_items).astype(np.int64)
    u, first = np.unique(uidx, return_index=True)
    stats["user_idx"] = u
    stats["n_train"] = np.bincount(np.searchsorted(u, p_user[train_pos]), minlength=len(u))
    return stats


# ----------------------------------------------------------------------------- items, cleanup


def _item_table(item_map: pa.Array, catalog: pa.Table | None, previous: pa.Table | None) -> pa.Table:
    """ITEM_COLUMNS for every mapped item: catalog text, else the previous run's, else the id."""
    n = len(item_map)
    title = pa.array([f"Item {v}" for v in item_map.to_pylist()], pa.string())
    category = pa.array([""] * n, pa.string())
    text = title
    for source in (previous, catalog):
        if source is None or source.num_rows == 0:
            continue
        pos = pc.index_in(item_map, value_set=source["item_id"].combine_chunks())
        found = pc.is_valid(pos)
        idx = pc.fill_null(pos, 0)
        title = pc.if_else(found, source["title"].combine_chunks().take(idx), title)
        category = pc.if_else(found, source["category"].combine_chunks().take(idx), category)
        text = pc.if_else(found, source["text"].combine_chunks().take(idx), text)
    return pa.table({"item_idx": pa.array(np.arange(n), pa.int64()), "item_id": item_map,
                     "title": title, "category": category, "text": text,
                     "popularity": pa.array(np.zeros(n, np.int64))})


def _load_items_if_any(data_dir: str) -> pa.Table | None:
    fs, path = resolve_fs(join(data_dir, ITEMS_FILE))
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    return pq.read_table(path, filesystem=fs, columns=["item_id", "title", "category", "text"])


def _load_hard_negatives(uri: str) -> dict[int, np.ndarray]:
    fs, path = resolve_fs(uri)
    try:
        t = pq.read_table(path, filesystem=fs, columns=["user_idx", "items"])
    except Exception as exc:
        raise DataError(f"{uri}: cannot read hard negatives (user_idx, items): {exc}") from None
    return {int(u): np.asarray(v, dtype=np.int64)
            for u, v in zip(t["user_idx"].to_pylist(), t["items"].to_pylist(), strict=True)}


def _clean(out: str) -> None:
    """Remove a previous run's outputs (not id_map/, raw/ or world/) so no stale parts remain."""
    fs, root = resolve_fs(out)
    fs.create_dir(root, recursive=True)
    for name in (INTERACTIONS_DIR, EXAMPLES_DIR, HISTORIES_DIR, REJECTS_DIR, WORK_DIR):
        p = f"{root}/{name}"
        if fs.get_file_info(p).type == pafs.FileType.Directory:
            fs.delete_dir(p)
    for name in (ITEMS_FILE, USERS_FILE, MANIFEST_FILE):
        p = f"{root}/{name}"
        if fs.get_file_info(p).type == pafs.FileType.File:
            fs.delete_file(p)


__all__ = ["run_preprocess", "detect_kind", "DataError"]
