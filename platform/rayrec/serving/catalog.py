"""Items added to (and hidden from) the running endpoint's catalog, without retraining.

``POST /items`` rows are checked (:func:`check_new_items`), embedded by the retrieval replica
that got them and committed here; every retrieval and generation replica then loads the commit
from storage (:class:`CatalogLog`, at most every ``serve.catalog_refresh_s``), so they all
serve the same items under the same item_idx, and a restarted endpoint serves them too.

Layout (``serve.catalog``, default ``<run_dir>/catalog``; a local path or a URI)::

    catalog.json                                {"seq": n, "segments": [{"file", "first", "last"}]}
    segments/seg-<first>-<last>-<id>.parquet    SEGMENT_SCHEMA rows of commits first..last

A commit writes its segment under a name of its own (temporary name, fsync and rename on a
local disk; one put on an object store), then ``catalog.json`` the same way: a commit exists
once ``catalog.json`` names it, so a crash in between leaves an unnamed file, never half a
commit. Rows carry their commit's ``seq``; a reader remembers the last seq it applied and reads
only the segments past it. Past ``serve.catalog_compact_segments`` files they are merged into one.

Commits are serialised by :class:`CatalogWriter`: inside Ray, one named actor per catalog
location that every replica commits through (two POSTs on two replicas cannot both add one id);
outside Ray, a lock in the process. A commit retried after its writer died is recognised by
its ``commit_id`` and answered as done, not as "already added".

item_idx is not stored: every reader numbers added items n_items, n_items+1, ... in commit
order, skipping ids its catalog already holds (an item a retraining has since made a catalog
item), so retrieval and generation replicas agree without asking each other. Vectors are stored
with the key of the model that made them; a reader with another model (a retrained retriever)
embeds the text again rather than use vectors from another space. Nothing here is pickled.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from rayrec import storage
from rayrec.data.text import item_text
from rayrec.serving.calls import wait_for

log = logging.getLogger("ray.serve")

CATALOG_FILE = "catalog.json"
SEGMENTS_DIR = "segments"
ADD, HIDE = "add", "hide"
# Per-row limits of POST /items (the free text's is serve.max_text_length).
MAX_ITEM_ID_CHARS = 200
MAX_TITLE_CHARS = 300
MAX_GENRES = 20
MAX_GENRE_CHARS = 100
_NO_CATEGORY = ("", "unknown", "(no genres listed)")  # as preprocessing picks a primary category

SEGMENT_SCHEMA = pa.schema([
    ("seq", pa.int64()),
    ("commit_id", pa.string()),
    ("action", pa.string()),  # add | hide
    ("item_id", pa.string()),
    ("title", pa.string()),
    ("genres", pa.list_(pa.string())),
    ("extra_text", pa.string()),  # the free text as posted, or null
    ("text", pa.string()),  # what the ranker and the text index read
    ("category", pa.string()),
    ("timestamp", pa.float64()),
    ("text_key", pa.string()),  # the text index encoder that made text_vector
    ("text_vector", pa.list_(pa.float32())),
    ("retriever_key", pa.string()),  # the retriever (and tower) that made retriever_vector
    ("retriever_vector", pa.list_(pa.float32())),  # null: an ID-only retriever has none
])


def catalog_dir(cfg) -> str:
    """Where a config's added and hidden items persist."""
    return cfg.serve.catalog or cfg.path("catalog")


# ---- rows ----------------------------------------------------------------------------------

def item_texts(title: str, genres: list[str], extra: str | None) -> tuple[str, str]:
    """(text, release text) of a posted item. The release text is the catalog's own rendering
    (:func:`rayrec.data.text.item_text`: title and genres), the input the retriever's new-item
    vectors were evaluated on; the text the ranker and the text index read appends the free
    text as one more `` | `` part, which the catalog's parser ignores (explanations' grounding)."""
    release = item_text(title, genres)
    extra = " ".join(extra.split()) if extra else ""
    return (f"{release} | {extra}" if extra else release), release


def primary_category(genres: list[str]) -> str:
    """The first real genre, as preprocessing picks an item's category ("" if none)."""
    return next((g for g in genres if g not in _NO_CATEGORY), "")


def _row_problem(row: dict[str, Any], item_id: str, max_text_chars: int) -> str | None:
    """What is wrong with one posted row's content (its types were checked by the schema)."""
    if not item_id.strip():
        return "item_id: empty"
    if item_id != item_id.strip():
        return "item_id: leading or trailing whitespace (ids are matched exactly)"
    if len(item_id) > MAX_ITEM_ID_CHARS:
        return f"item_id: longer than {MAX_ITEM_ID_CHARS} characters"
    title = row["title"]
    if not title.strip():
        return "title: empty"
    if len(title) > MAX_TITLE_CHARS:
        return f"title: longer than {MAX_TITLE_CHARS} characters"
    genres = row.get("genres") or []
    if len(genres) > MAX_GENRES:
        return f"genres: more than {MAX_GENRES}"
    for j, g in enumerate(genres):
        if not g.strip():
            return f"genres[{j}]: empty"
        if len(g) > MAX_GENRE_CHARS:
            return f"genres[{j}]: longer than {MAX_GENRE_CHARS} characters"
    if row.get("text") is not None and len(row["text"]) > max_text_chars:
        return f"text: longer than {max_text_chars} characters (serve.max_text_length)"
    return None


def check_new_items(rows: list[dict[str, Any]], existing: Callable[[str], str | None], max_text_chars: int,
                    room: int, max_added: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(good rows, rejections) of a POST /items body. A good row is cleaned (whitespace,
    texts, category) and keeps its request ``index``; a rejection is ``{item_id, index,
    reason}``. ``existing(id)`` says why an id is taken (None: free); an id repeated in the
    request is rejected from its second row on; rows past ``room`` free places are rejected."""
    good, rejected, first_at = [], [], {}
    for i, row in enumerate(rows):
        item_id = str(row["item_id"])
        reason = _row_problem(row, item_id, max_text_chars) or existing(item_id)
        if reason is None and item_id in first_at:
            reason = f"item_id: repeated in this request (first at index {first_at[item_id]})"
        first_at.setdefault(item_id, i)
        if reason is None and len(good) >= room:
            reason = f"catalog full: serve.max_added_items={max_added} items added already"
        if reason is not None:
            rejected.append({"item_id": item_id, "index": i, "reason": reason})
            continue
        title = " ".join(row["title"].split())
        genres = [" ".join(g.split()) for g in row.get("genres") or []]
        text, release = item_texts(title, genres, row.get("text"))
        good.append({"index": i, "item_id": item_id, "title": title, "genres": genres,
                     "extra_text": row.get("text"), "text": text, "release_text": release,
                     "category": primary_category(genres)})
    return good, rejected


def check_hidden_ids(item_ids: list[str], known: Callable[[str], bool],
                     hidden: Callable[[str], bool]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(good ``{index, item_id}``, rejections) of a POST /items/hide body."""
    good, rejected, seen = [], [], set()
    for i, item_id in enumerate(item_ids):
        reason = ("item_id: not in the catalog" if not known(item_id) else
                  "item_id: already hidden" if hidden(item_id) else
                  "item_id: repeated in this request" if item_id in seen else None)
        seen.add(item_id)
        if reason is None:
            good.append({"index": i, "item_id": item_id})
        else:
            rejected.append({"item_id": item_id, "index": i, "reason": reason})
    return good, rejected


# ---- storage -------------------------------------------------------------------------------

def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    table = pa.Table.from_pylist(
        [{name: r.get(name) for name in SEGMENT_SCHEMA.names} for r in rows], schema=SEGMENT_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _read_segment(location: str, columns: list[str] | None) -> pa.Table:
    return pq.read_table(pa.BufferReader(storage.read_bytes(location)), columns=columns)


class CatalogLog:
    """A catalog's commits, each read once and in order: :meth:`poll` gives the rows committed
    since the last poll (or None when there are none)."""

    def __init__(self, root: str, columns: list[str] | None = None) -> None:
        self.root = str(root)
        self.columns = columns  # None: every column (vectors included)
        self.seq = 0  # the last commit read
        self.segments: list[dict[str, Any]] = []  # as catalog.json listed them at the last poll

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads(storage.read_text(storage.join(self.root, CATALOG_FILE)))
        except FileNotFoundError:
            return {"seq": 0, "segments": []}

    def poll(self) -> pd.DataFrame | None:
        """:meth:`read_new`, then :meth:`advance` past it."""
        new = self.read_new()
        if new is None:
            return None
        rows, doc = new
        self.advance(doc)
        return rows

    def read_new(self) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """(rows committed since the last :meth:`advance`, the catalog.json they come from), or
        None when there are none. Reads only: a caller that drops the rows reads them again."""
        for attempt in range(3):
            doc = self.manifest()
            if int(doc["seq"]) <= self.seq:
                self.segments = doc["segments"]
                return None
            try:
                return self._read(doc["segments"]), doc
            except FileNotFoundError:  # merged away since catalog.json was read: read it again
                if attempt == 2:
                    raise
        return None

    def advance(self, doc: dict[str, Any]) -> None:
        """Mark ``doc``'s commits as applied."""
        self.seq, self.segments = max(self.seq, int(doc["seq"])), doc["segments"]

    def _read(self, segments: list[dict[str, Any]]) -> pd.DataFrame:
        tables = [_read_segment(storage.join(self.root, SEGMENTS_DIR, s["file"]), self.columns)
                  for s in segments if int(s["last"]) > self.seq]
        df = pa.concat_tables(tables).to_pandas() if tables else SEGMENT_SCHEMA.empty_table().to_pandas()
        return df[df["seq"] > self.seq].sort_values("seq", kind="stable").reset_index(drop=True)


class CatalogWriter:
    """The one committer of a catalog location (module docstring): checks ids against every
    commit so far, writes the commit's segment, then ``catalog.json``."""

    def __init__(self, root: str, compact_segments: int = 64) -> None:
        self.root = str(root)
        self.compact_segments = compact_segments
        self.log = CatalogLog(root, columns=["seq", "commit_id", "action", "item_id"])
        self.added: dict[str, str] = {}  # item_id -> the commit_id that added it
        self.hidden: set[str] = set()

    def _catch_up(self) -> None:
        rows = self.log.poll()
        if rows is None:
            return
        for action, item_id, commit_id in zip(rows["action"], rows["item_id"], rows["commit_id"], strict=True):
            if action == ADD:
                self.added.setdefault(item_id, commit_id)
            else:
                self.hidden.add(item_id)

    def commit(self, commit_id: str, adds: list[dict[str, Any]], hides: list[str],
               max_added: int) -> dict[str, Any]:
        """Commit what is still free; returns ``{"seq", "done": [ids], "rejected": {id: reason}}``
        (``done`` includes the rows an earlier try of this same ``commit_id`` committed)."""
        self._catch_up()
        seq, now = self.log.seq + 1, time.time()
        rows, done, rejected = [], [], {}
        room = max_added - len(self.added)
        for r in adds:
            item_id = r["item_id"]
            if self.added.get(item_id) == commit_id or item_id in done:
                done.append(item_id)  # a retry of a commit that landed
            elif item_id in self.added:
                rejected[item_id] = "item_id: already added"
            elif room <= 0:
                rejected[item_id] = f"catalog full: serve.max_added_items={max_added} items added already"
            else:
                rows.append(r | {"seq": seq, "commit_id": commit_id, "action": ADD, "timestamp": now})
                done.append(item_id)
                room -= 1
        for item_id in hides:
            if item_id in self.hidden:
                rejected[item_id] = "item_id: already hidden"
            else:
                rows.append({"seq": seq, "commit_id": commit_id, "action": HIDE, "item_id": item_id,
                             "timestamp": now})
                done.append(item_id)
        if rows:
            self._write(seq, rows)
        return {"seq": self.log.seq, "done": done, "rejected": rejected}

    def _write(self, seq: int, rows: list[dict[str, Any]]) -> None:
        name = f"seg-{seq:09d}-{seq:09d}-{uuid.uuid4().hex[:8]}.parquet"
        storage.write_bytes(storage.join(self.root, SEGMENTS_DIR, name), _parquet_bytes(rows), durable=True)
        segments, merged = [*self.log.segments, {"file": name, "first": seq, "last": seq}], []
        if len(segments) > self.compact_segments:
            segments, merged = [self._merge(segments)], segments
        doc = {"format": 1, "seq": seq, "segments": segments}
        storage.write_bytes(storage.join(self.root, CATALOG_FILE), json.dumps(doc, indent=1).encode(), durable=True)
        # Committed: the state follows storage only now (a failed write above changed nothing).
        for r in rows:
            if r["action"] == ADD:
                self.added[r["item_id"]] = r["commit_id"]
            else:
                self.hidden.add(r["item_id"])
        self.log.seq, self.log.segments = seq, segments
        for s in merged:  # a reader that listed them reads catalog.json again (CatalogLog.poll)
            fs, path = storage.resolve_fs(storage.join(self.root, SEGMENTS_DIR, s["file"]))
            try:
                fs.delete_file(path)
            except OSError as e:
                log.warning("catalog: could not remove merged segment %s: %s", s["file"], e)

    def _merge(self, segments: list[dict[str, Any]]) -> dict[str, Any]:
        tables = [_read_segment(storage.join(self.root, SEGMENTS_DIR, s["file"]), None) for s in segments]
        first, last = int(segments[0]["first"]), int(segments[-1]["last"])
        name = f"seg-{first:09d}-{last:09d}-{uuid.uuid4().hex[:8]}.parquet"
        buf = io.BytesIO()
        pq.write_table(pa.concat_tables(tables).cast(SEGMENT_SCHEMA), buf)
        storage.write_bytes(storage.join(self.root, SEGMENTS_DIR, name), buf.getvalue(), durable=True)
        return {"file": name, "first": first, "last": last}


# ---- committing from a replica ---------------------------------------------------------------

WRITER_PREFIX = "rayrec_catalog_writer"
NAMESPACE = "rayrec"
_LOCAL: dict[str, tuple[CatalogWriter, threading.Lock]] = {}
_LOCAL_GUARD = threading.Lock()


def _local_commit(root: str, compact: int, *args: Any) -> dict[str, Any]:
    with _LOCAL_GUARD:
        writer, lock = _LOCAL.setdefault(root, (CatalogWriter(root, compact), threading.Lock()))
    with lock:
        return writer.commit(*args)


class CatalogCommitter:
    """How a replica commits: through the location's named writer actor when Ray is up (one
    writer for every replica, whatever app they belong to), else in this process."""

    def __init__(self, root: str, compact_segments: int) -> None:
        self.root = str(root)
        self.compact_segments = compact_segments
        self._actor = None

    def _writer(self):
        if self._actor is None:
            # Owned by the replica that made it (not detached): it goes with the app, and the next
            # commit after its owner is gone makes another (it holds no state storage lacks).
            name = f"{WRITER_PREFIX}:{hashlib.sha1(self.root.encode()).hexdigest()[:16]}"
            self._actor = ray.remote(num_cpus=0, max_concurrency=1)(CatalogWriter).options(
                name=name, namespace=NAMESPACE, get_if_exists=True,
            ).remote(self.root, self.compact_segments)
        return self._actor

    async def commit(self, commit_id: str, adds: list[dict[str, Any]], hides: list[str], max_added: int,
                     timeout_s: float) -> dict[str, Any]:
        args = (commit_id, adds, hides, max_added)
        if not ray.is_initialized():
            return await asyncio.wait_for(
                asyncio.to_thread(_local_commit, self.root, self.compact_segments, *args), timeout_s)
        for attempt in range(2):
            try:
                return await wait_for(self._writer().commit.remote(*args), timeout_s)
            except ray.exceptions.RayActorError:  # its owner replica went away: make another
                self._actor = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def new_commit_id() -> str:
    return uuid.uuid4().hex


def rows_by_action(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(added rows in commit order, hidden item ids) of a polled batch."""
    adds = rows[rows["action"] == ADD].reset_index(drop=True)
    return adds, rows.loc[rows["action"] == HIDE, "item_id"].astype(str).tolist()


def model_key(locations: Iterable[str]) -> str:
    """A fingerprint of the files that define a model (its stored vectors are its own): their
    bytes, so a retrained model never passes for the one that made the vectors."""
    h = hashlib.sha1()
    for loc in locations:
        h.update(storage.read_bytes(loc) if storage.is_file(loc) else b"-")
        h.update(b"\0")
    return h.hexdigest()[:16]
