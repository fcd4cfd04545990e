"""A synthetic event log sampled from :class:`SyntheticWorld` (the embedded default dataset).

Each row is one *impression*: a user in a session was shown an item and clicked it with the
world's true probability. Which item is shown follows the world's sequential chain
(:meth:`SyntheticWorld.simulate`, formulas in :mod:`rayrec.data.world`): the next part of a
series the user just clicked, an item near the user's last click in this session, or the best
of four popularity draws by taste. ``event`` is ``"click"`` or ``"impression"`` (shown, not
clicked). Keeping the non-clicks gives real negatives and the click-through rate the world
implies, which exploration and off-policy evaluation need; clicks alone are the positives.

Each user's impressions are cut into sessions of ``session_length``; session k of a user starts
at ``T0 + U_(k) + k * session_length * 120`` (U_(k) sorted uniforms over the log's span less the
sessions' room), and impressions in a session are 5-119 s apart, so sessions never overlap and
sorting a user's rows by timestamp gives back the order the chain produced them in.

Generation runs as one Ray task per chunk of users, each seeded from (seed, chunk id) and
writing its own file, so the log scales to tens of millions of rows without passing through
the driver. A few rows per chunk are deliberately malformed (``malformed_fraction``):
non-numeric user ids, unparseable timestamps, missing items, exact duplicates, and items
missing from the catalog. Ids, timestamps and events are all stored as strings, like a raw log.
The catalog (:func:`catalog_table`) carries each item's title, category and description.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from rayrec.data.config import CatalogSource, ColumnMapping, DataConfig, SyntheticWorldConfig
from rayrec.data.world import SyntheticWorld
from rayrec.storage import join, resolve_fs

T0 = 1_600_000_000  # 2020-09-13
MALFORMED_KINDS = ("bad_user_id", "bad_timestamp", "missing_field", "duplicate",
                   "item_not_in_catalog")
EVENTS_DIR, CATALOG_FILE, DONE_FILE = "events", "catalog.parquet", "_generated.json"


def generate_chunk(world: SyntheticWorld, cfg: SyntheticWorldConfig, chunk: int, users: np.ndarray,
                   n_events: int) -> pa.Table:
    """The impressions of ``users`` (a contiguous block), ``n_events`` in total, time-ordered."""
    rng = np.random.default_rng([cfg.seed, 7919, chunk])
    activity = rng.lognormal(0.0, 1.0, size=len(users))
    counts = rng.multinomial(n_events, activity / activity.sum())
    user = np.repeat(users, counts)
    n = len(user)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    pos = np.arange(n) - np.repeat(starts, counts)  # position in the user's history
    in_sess = pos % cfg.session_length
    item, click = world.simulate(users, counts, in_sess == 0, rng)
    ts = _timestamps(rng, cfg, counts, pos)
    if cfg.release_fraction > 0:  # an item released late has no impression before its release
        live = ts >= release_times(world.n_items, cfg)[item]
        user, item, click, ts = user[live], item[live], click[live], ts[live]
        n = len(user)
    user_s = pc.cast(pa.array(user, pa.int64()), pa.string()).to_numpy(zero_copy_only=False).astype(object)
    item_s = pc.cast(pa.array(item, pa.int64()), pa.string()).to_numpy(zero_copy_only=False).astype(object)
    ts_s = pc.cast(pa.array(ts, pa.int64()), pa.string()).to_numpy(zero_copy_only=False).astype(object)
    event = np.where(click, "click", "impression").astype(object)
    m = rng.binomial(n, cfg.malformed_fraction) if n else 0
    rows = rng.choice(n, size=m, replace=False) if m else np.zeros(0, dtype=np.int64)
    kinds = rng.integers(0, len(MALFORMED_KINDS), size=m)
    for r, k in zip(rows, kinds, strict=True):
        kind = MALFORMED_KINDS[k]
        if kind == "bad_user_id":
            user_s[r] = f"user_{user_s[r]}"
        elif kind == "bad_timestamp":
            ts_s[r] = "not-a-time"
        elif kind == "missing_field":
            item_s[r] = ""
        elif kind == "duplicate" and r > 0:
            user_s[r], item_s[r], ts_s[r], event[r] = user_s[r - 1], item_s[r - 1], ts_s[r - 1], event[r - 1]
        elif kind == "item_not_in_catalog":
            item_s[r] = str(world.n_items + 1_000_000 + int(r))
    return pa.table({"user_id": pa.array(user_s, pa.string()), "item_id": pa.array(item_s, pa.string()),
                     "timestamp": pa.array(ts_s, pa.string()), "event": pa.array(event, pa.string())})


@ray.remote(num_cpus=1)
def _write_chunk(world_ref, cfg: SyntheticWorldConfig, chunk: int, u0: int, u1: int, n_events: int,
                 uri: str) -> int:
    world = world_ref if isinstance(world_ref, SyntheticWorld) else ray.get(world_ref)
    table = generate_chunk(world, cfg, chunk, np.arange(u0, u1), n_events)
    fs, path = resolve_fs(uri)
    if cfg.format == "csv":
        with fs.open_output_stream(path) as f:
            pacsv.write_csv(table, f)
    else:
        pq.write_table(table, path, filesystem=fs, row_group_size=250_000)
    return table.num_rows


def release_times(n_items: int, cfg: SyntheticWorldConfig) -> np.ndarray:
    """Unix seconds each item enters the catalog: T0 for most; a seeded ``release_fraction`` of
    the items (any popularity: new releases, not a long tail) at uniform times within
    ``release_window`` of the log's span. The world's tastes are unchanged: a released item is
    drawn, shown and clicked as before, only never before it exists."""
    rng = np.random.default_rng([cfg.seed, 4242])
    out = np.full(n_items, T0, dtype=np.int64)
    late = rng.choice(n_items, size=int(round(cfg.release_fraction * n_items)), replace=False)
    lo, hi = cfg.release_window
    out[late] = T0 + (rng.uniform(lo, hi, size=len(late)) * cfg.days * 86400).astype(np.int64)
    return out


def _timestamps(rng: np.random.Generator, cfg: SyntheticWorldConfig, counts: np.ndarray,
                pos: np.ndarray) -> np.ndarray:
    """Unix seconds per impression: non-overlapping sessions, increasing within each user."""
    n_sess = -(-counts // cfg.session_length)
    room = cfg.session_length * 120  # a session lasts under session_length * 119 s
    sess_owner = np.repeat(np.arange(len(counts)), n_sess)
    sess_k = np.arange(int(n_sess.sum())) - np.repeat(np.r_[0, np.cumsum(n_sess)[:-1]], n_sess)
    # sorted uniform starts over the span left after reserving each earlier session's room
    span = np.maximum(cfg.days * 86400 - n_sess * room, 0)[sess_owner]
    u = rng.uniform(0, 1, size=len(sess_owner)) * span
    u = u[np.lexsort((u, sess_owner))]
    sess_times = u.astype(np.int64) + sess_k * room
    session = np.repeat(np.r_[0, np.cumsum(n_sess)[:-1]], counts) + pos // cfg.session_length
    gaps = rng.integers(5, 120, size=len(pos))
    cum = np.cumsum(gaps)
    sess_first = np.arange(len(pos)) - pos % cfg.session_length
    return T0 + sess_times[session] + cum - cum[sess_first]


def catalog_table(world: SyntheticWorld) -> pa.Table:
    """item_id, title, category and description: the text preprocessing turns into ``text``."""
    return pa.table({
        "item_id": pa.array([str(i) for i in range(world.n_items)], pa.string()),
        "title": pa.array(world.titles, pa.string()),
        "category": pa.array([world.category_names[c] for c in world.item_category], pa.string()),
        "description": pa.array(world.descriptions, pa.string()),
    })


def generate_event_log(cfg: SyntheticWorldConfig, raw_dir: str, world_dir: str | None = None) -> dict:
    """Write ``raw_dir/events/part-*.{parquet,csv}`` and ``raw_dir/catalog.parquet``; save the world.

    Skipped when ``raw_dir`` already holds a log generated from the same config.
    """
    fs, root = resolve_fs(raw_dir)
    spec = cfg.model_dump(mode="json")
    done = f"{root}/{DONE_FILE}"
    if fs.get_file_info(done).type == pafs.FileType.File:
        with fs.open_input_stream(done) as f:
            info = json.loads(f.read())
        if info.get("config") == spec:
            return info
    world = SyntheticWorld.generate(cfg)
    if world_dir is not None:
        world.save(world_dir)
    fs.delete_dir_contents(root, missing_dir_ok=True)
    fs.create_dir(f"{root}/{EVENTS_DIR}", recursive=True)
    n_chunks = max(1, math.ceil(cfg.n_events / cfg.rows_per_chunk))
    n_chunks = min(n_chunks, cfg.n_users)
    bounds = np.linspace(0, cfg.n_users, n_chunks + 1).astype(np.int64)
    events = np.diff(np.linspace(0, cfg.n_events, n_chunks + 1).astype(np.int64))
    world.item_neighbors()  # computed once here, shipped with the world to every task
    world_ref = ray.put(world)
    ext = "csv" if cfg.format == "csv" else "parquet"
    refs = [_write_chunk.remote(world_ref, cfg, c, int(bounds[c]), int(bounds[c + 1]), int(events[c]),
                                join(raw_dir, EVENTS_DIR, f"part-{c:05d}.{ext}"))
            for c in range(n_chunks)]
    rows = int(sum(ray.get(refs)))
    pq.write_table(catalog_table(world), f"{root}/{CATALOG_FILE}", filesystem=fs)
    info = {"config": spec, "rows": rows, "chunks": n_chunks}
    with fs.open_output_stream(done) as f:
        f.write(json.dumps(info).encode())
    return info


def synthetic_data_config(cfg: DataConfig, raw_dir: str) -> DataConfig:
    """The DataConfig that reads a generated log as a generic event log with its catalog."""
    return DataConfig(
        source="events", path=join(raw_dir, EVENTS_DIR), format=cfg.synthetic.format,
        columns=ColumnMapping(user="user_id", item="item_id", timestamp="timestamp", rating=None,
                              event="event", id_type="int"),
        catalog=CatalogSource(path=join(raw_dir, CATALOG_FILE), format="parquet", item="item_id",
                              title="title", text_fields=["title", "description"],
                              category="category"),
        synthetic=cfg.synthetic, out=cfg.out, encoding="utf-8", read_chunk_bytes=cfg.read_chunk_bytes,
    )
