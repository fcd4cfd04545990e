"""The serving event log: impressions and feedback appended as Parquet part files.

Layout (columns from :mod:`rayrec.data.schema`)::

    <event_log_dir>/impressions/part-<unix_ms>-<writer>-<seq>.parquet   IMPRESSION_COLUMNS
    <event_log_dir>/feedback/part-<unix_ms>-<writer>-<seq>.parquet      FEEDBACK_COLUMNS
    <event_log_dir>/explanations/part-<unix_ms>-<writer>-<seq>.parquet  EXPLANATION_COLUMNS
    <event_log_dir>/catalog/part-<unix_ms>-<writer>-<seq>.parquet       CATALOG_SCHEMA (items
                                                                         added / hidden live)

Each writer (one per ingress replica) buffers rows and writes a new part file when
``flush_rows`` rows are buffered, every ``flush_interval_s`` seconds from a background
thread, and on :meth:`EventLogWriter.close`. A part is written under a temporary name,
fsynced (local disks) and renamed, so readers never see half a file and an acknowledged row
survives a crash. A failed write puts every unwritten row back, in order; while storage is
down the buffer is bounded (``max_buffered_rows``): beyond it ``append`` raises
:class:`EventLogFull`, which the endpoint answers with 503 (back-pressure: nothing it
acknowledged is dropped). Readers move a part file they cannot read to ``<kind>/_quarantine/``
and go on (counted in :func:`read_report`); a part that storage cannot deliver right now
is retried and then an error, never quarantined. ``event_log_dir`` may be a local path or a
pyarrow filesystem URI (``s3://bucket/prefix``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrec import storage
from rayrec.data.schema import (
    EXPLANATION_COLUMNS,
    FEEDBACK_COLUMNS,
    IMPRESSION_COLUMNS,
    SOURCE_COLUMN,
)
from rayrec.storage import resolve_fs

log = logging.getLogger(__name__)

IMPRESSIONS = "impressions"
FEEDBACK = "feedback"
EXPLANATIONS = "explanations"

IMPRESSION_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("timestamp", pa.float64()),
        ("user_id", pa.string()),
        ("user_idx", pa.int64()),
        ("policy", pa.string()),
        ("position", pa.int64()),
        ("item_idx", pa.int64()),
        ("item_id", pa.string()),
        ("score", pa.float64()),
        ("propensity", pa.float64()),
        ("n_candidates", pa.int64()),
        ("degraded", pa.bool_()),
        (SOURCE_COLUMN, pa.string()),
    ]
)
FEEDBACK_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("timestamp", pa.float64()),
        ("item_idx", pa.int64()),
        ("item_id", pa.string()),
        ("reward", pa.float64()),
        (SOURCE_COLUMN, pa.string()),
    ]
)
EXPLANATION_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("timestamp", pa.float64()),
        ("position", pa.int64()),
        ("item_idx", pa.int64()),
        ("item_id", pa.string()),
        ("text", pa.string()),
        ("status", pa.string()),
        ("unsupported", pa.string()),
        ("seconds", pa.float64()),
    ]
)
# One row per item added to (action "add") or hidden from ("hide") the running catalog by the
# admin routes; ``retriever``: the item got a sequential-retriever vector (False: text index only).
CATALOG_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("timestamp", pa.float64()),
        ("action", pa.string()),
        ("item_idx", pa.int64()),
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("category", pa.string()),
        ("retriever", pa.bool_()),
    ]
)
assert tuple(IMPRESSION_SCHEMA.names) == (*IMPRESSION_COLUMNS, SOURCE_COLUMN)
assert tuple(FEEDBACK_SCHEMA.names) == (*FEEDBACK_COLUMNS, SOURCE_COLUMN)
assert tuple(EXPLANATION_SCHEMA.names) == EXPLANATION_COLUMNS
CATALOG = "catalog"
_SCHEMAS = {IMPRESSIONS: IMPRESSION_SCHEMA, FEEDBACK: FEEDBACK_SCHEMA, EXPLANATIONS: EXPLANATION_SCHEMA,
            CATALOG: CATALOG_SCHEMA}




class EventLogFull(RuntimeError):
    """The buffer is at ``max_buffered_rows`` (storage failing): refuse new rows, keep old ones."""


def _check_row(kind: str, row: Mapping[str, Any]) -> None:
    names = _SCHEMAS[kind].names
    missing = [c for c in names if c not in row and c != SOURCE_COLUMN]  # optional: null
    extra = [c for c in row if c not in names]
    if missing or extra:
        raise ValueError(f"{kind} event has missing columns {missing} / unknown columns {extra}")


class EventLogWriter:
    """Buffered, thread-safe appender of impression and feedback rows."""

    def __init__(
        self,
        root: str,
        flush_rows: int = 64,
        flush_interval_s: float = 2.0,
        writer_id: str | None = None,
        background: bool = True,
        max_buffered_rows: int = 100_000,
    ) -> None:
        self.root = root
        self.max_buffered_rows = max_buffered_rows
        self.last_error: str | None = None
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.writer_id = writer_id or uuid.uuid4().hex[:12]
        self._fs, self._base = resolve_fs(root)
        for kind in _SCHEMAS:
            self._fs.create_dir(f"{self._base}/{kind}", recursive=True)
        self._buffers: dict[str, list[Mapping[str, Any]]] = {k: [] for k in _SCHEMAS}
        self._lock = threading.Lock()  # guards the buffers
        self._write_lock = threading.Lock()  # one part write at a time, in order
        self._seq = 0
        self._closed = False
        self._wake = threading.Event()
        self.rows_written = {k: 0 for k in _SCHEMAS}
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="rayrec-eventlog", daemon=True)
            self._thread.start()

    def append(self, kind: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Buffer rows of one kind (impressions, feedback, explanations, catalog); columns are checked now."""
        if self._closed:
            raise RuntimeError("event log writer is closed")
        rows = list(rows)
        for r in rows:
            _check_row(kind, r)
        with self._lock:
            self.check_capacity(len(rows))
            self._buffers[kind].extend(rows)
            full = len(self._buffers[kind]) >= self.flush_rows
        if full:
            self._wake.set()

    def log_impressions(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.append(IMPRESSIONS, rows)

    def log_feedback(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.append(FEEDBACK, rows)

    def log_explanations(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.append(EXPLANATIONS, rows)

    def log_catalog(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.append(CATALOG, rows)

    def check_capacity(self, rows: int = 1) -> None:
        """Raise EventLogFull now if ``rows`` more would not fit (before acting on a request)."""
        if self.buffered + rows > self.max_buffered_rows:
            raise EventLogFull(
                f"event log buffer full ({self.buffered} rows, max_buffered_rows="
                f"{self.max_buffered_rows}): storage at {self.root} failing ({self.last_error})")

    @property
    def buffered(self) -> int:
        """Rows acknowledged but not yet on storage."""
        return sum(len(v) for v in self._buffers.values())

    def flush(self) -> int:
        """Write every buffered row now; returns the number of rows written. On a storage
        error every row not written (of this kind and the kinds after it) goes back to the
        front of its buffer, so a transient failure loses nothing, and the error is raised."""
        with self._write_lock:
            with self._lock:
                pending = [(k, v) for k, v in self._buffers.items() if v]
                self._buffers = {k: [] for k in _SCHEMAS}
            n = 0
            for i, (kind, rows) in enumerate(pending):
                try:
                    self._write_part(kind, rows)
                except Exception as e:
                    self.last_error = f"{type(e).__name__}: {e}"
                    with self._lock:
                        for k, unwritten in pending[i:]:
                            self._buffers[k][:0] = unwritten
                    raise
                n += len(rows)
            self.last_error = None
            return n

    def _write_part(self, kind: str, rows: list[Mapping[str, Any]]) -> None:
        table = pa.Table.from_pylist(list(rows), schema=_SCHEMAS[kind])
        self._seq += 1
        name = f"part-{int(time.time() * 1000)}-{self.writer_id}-{self._seq:06d}.parquet"
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        # fsynced, then renamed, then the rename fsynced: an acknowledged row survives a crash
        storage.write_bytes(storage.join(self.root, kind, name), buf.getvalue().to_pybytes(), durable=True)
        self.rows_written[kind] += len(rows)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # keep the thread alive; rows stay buffered for the next try
                log.exception("event log flush to %s failed; will retry", self.root)

    def close(self) -> None:
        """Stop the background thread and write what is left (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.flush_interval_s * 2))
        self.flush()


QUARANTINE = "_quarantine"


def _quarantine(fs: pafs.FileSystem, path: str, kind_dir: str, err: Exception) -> None:
    """Move an unreadable part aside (kept for inspection, never read again)."""
    log.warning("event log part %s is unreadable (%s: %s); moved to %s/", path, type(err).__name__,
                err, QUARANTINE)
    try:
        fs.create_dir(f"{kind_dir}/{QUARANTINE}", recursive=True)
        fs.move(path, f"{kind_dir}/{QUARANTINE}/{path.rsplit('/', 1)[-1]}")
    except OSError as e:  # read-only storage: skipped now, reported again next time
        log.warning("could not quarantine %s: %s", path, e)


READ_TRIES, READ_BACKOFF_S = 4, 0.5


def _read_part(fs: pafs.FileSystem, path: str) -> bytes:
    """A part's bytes. A storage error (timeout, throttling, an outage) is not the part's
    fault: retried with backoff, then raised, so nothing is quarantined for it and the caller
    (training, OPE) fails visibly instead of learning from part of the log."""
    for attempt in range(READ_TRIES):
        try:
            with fs.open_input_stream(path) as f:
                return f.read()
        except OSError as e:
            if attempt == READ_TRIES - 1:
                raise OSError(f"event log part {path} could not be read after {READ_TRIES} tries "
                              f"({type(e).__name__}: {e}); it was left in place: retry when storage is back") from e
            time.sleep(READ_BACKOFF_S * 2 ** attempt)
    raise AssertionError("unreachable")


def _read_kind(root: str, kind: str) -> pd.DataFrame:
    schema = _SCHEMAS[kind]
    fs, base = resolve_fs(root)
    info = fs.get_file_info(pafs.FileSelector(f"{base}/{kind}", allow_not_found=True))
    files = sorted(
        i.path for i in info
        if i.type == pafs.FileType.File and i.base_name.startswith("part-") and i.path.endswith(".parquet")
    )
    tables = []
    for f in files:
        data = _read_part(fs, f)  # storage errors: retried, then raised (the part stays)
        try:
            tables.append(pq.read_table(pa.BufferReader(data), schema=schema))
        except (OSError, ValueError, pa.ArrowException) as e:  # empty, garbled or foreign part
            _quarantine(fs, f, f"{base}/{kind}", e)
    if not tables:
        return schema.empty_table().to_pandas()
    df = pa.concat_tables(tables).to_pandas()
    return df.sort_values("timestamp", kind="stable").reset_index(drop=True)


def read_report(root: str) -> dict[str, int]:
    """Part files read and quarantined per kind (what off-policy evaluation can trust)."""
    fs, base = resolve_fs(root)
    out: dict[str, int] = {}
    for kind in _SCHEMAS:
        for sub, key in (("", f"{kind}_parts"), (f"/{QUARANTINE}", f"{kind}_quarantined")):
            info = fs.get_file_info(pafs.FileSelector(f"{base}/{kind}{sub}", allow_not_found=True))
            out[key] = sum(i.type == pafs.FileType.File and i.base_name.startswith("part-") for i in info)
    return out


def read_explanations(root: str) -> pd.DataFrame:
    """Every explanation the endpoint generated (served or withheld), oldest first."""
    return _read_kind(root, EXPLANATIONS)


def read_catalog_events(root: str) -> pd.DataFrame:
    """Every item added to or hidden from the running catalog, oldest first."""
    return _read_kind(root, CATALOG)


def read_events(root: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the whole event log: ``(impressions_df, feedback_df)`` with the schema columns.
    Feedback is one row per ``(request_id, item_id)``, the first written: a retried feedback
    may be written twice (at least once by the endpoint, exactly once here)."""
    feedback = _read_kind(root, FEEDBACK).drop_duplicates(["request_id", "item_id"], keep="first")
    return _read_kind(root, IMPRESSIONS), feedback.reset_index(drop=True)
