"""Interaction sources: MovieLens (100k, 1m, latest), generic event logs, and their catalogs.

The driver *plans* a source (finds the files, checks every file can be read and has the mapped
columns, loads the small item catalog, cuts the log into chunks); Ray workers *read* chunks into
the canonical raw table: ``user_id, item_id, timestamp, rating, event`` as strings, plus ``_row``
(line or row number in the file). Rows the parser cannot split come back as rejects.
Paths may be local or any URI pyarrow's filesystems read (s3://, gs://, ...).
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from rayrec.data.config import DataConfig
from rayrec.data.schema import REJECT_COLUMNS
from rayrec.data.text import item_text
from rayrec.errors import DataError
from rayrec.storage import join, resolve_fs

RAW_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "event")
CATALOG_COLUMNS = ("item_id", "title", "category", "text")
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
               ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}



@dataclass(frozen=True)
class Chunk:
    """A unit of reading: a byte range of a text file or a row-group range of a Parquet file."""

    path: str
    fmt: str  # csv | tsv | dat (MovieLens '::') | parquet | jsonl
    start: int
    end: int
    names: tuple[str, ...]  # the file's columns (text formats)
    header: bool  # this chunk starts with the header line
    encoding: str
    mapping: tuple[tuple[str, str], ...]  # (canonical column, file column)
    delimiter: str = ","

    @property
    def source(self) -> str:
        if self.fmt == "parquet" or self.start == 0:
            return self.path
        return f"{self.path}[bytes {self.start}:{self.end}]"


@dataclass
class SourcePlan:
    """What the pipeline reads: chunks of the log plus the item catalog."""

    kind: str
    root: str
    files: list[str]
    chunks: list[Chunk]
    catalog: pa.Table | None  # CATALOG_COLUMNS, item_id canonical string
    id_type: str = "int"
    has_rating: bool = False
    has_event: bool = False
    est_rows: int = 0
    extra_columns: dict[str, list[str]] = field(default_factory=dict)


# ----------------------------------------------------------------------------- filesystem


def _with_scheme(root_uri: str, path: str) -> str:
    """Turn a filesystem path back into a URI of the same scheme as ``root_uri``."""
    if "://" in root_uri:
        return f"{root_uri.split('://', 1)[0]}://{path.lstrip('/')}"
    return path


def _size(fs: pafs.FileSystem, path: str) -> int:
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise DataError(f"{path}: file not found")
    return int(info.size)


def read_bytes(uri: str, start: int = 0, end: int | None = None) -> bytes:
    fs, path = resolve_fs(uri)
    with fs.open_input_file(path) as f:
        end = f.size() if end is None else end
        return f.read_at(end - start, start)


def read_line_range(uri: str, start: int, end: int) -> bytes:
    """The whole lines that start in [start, end): the line-aligned slice of a text file."""
    fs, path = resolve_fs(uri)
    with fs.open_input_file(path) as f:
        size = f.size()
        begin, stop = _line_start(f, start, size), _line_start(f, end, size)
        return f.read_at(stop - begin, begin) if stop > begin else b""


def _line_start(f, pos: int, size: int) -> int:
    """The first line start at or after ``pos`` (chunks own the lines that start inside them)."""
    if pos <= 0:
        return 0
    if pos >= size:
        return size
    if f.read_at(1, pos - 1) == b"\n":
        return pos
    step = 1 << 16
    while pos < size:
        buf = f.read_at(min(step, size - pos), pos)
        i = buf.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(buf)
    return size


# ----------------------------------------------------------------------------- planning


def detect_kind(cfg: DataConfig) -> str:
    """The source kind for ``cfg.source == "auto"``: synthetic, ml-100k, ml-1m, ml-latest or events."""
    if cfg.path is None:
        return "synthetic"
    fs, path = resolve_fs(cfg.path)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{cfg.path}: data path not found")
    if info.type == pafs.FileType.Directory:
        names = {posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(path))}
        if "u.data" in names:
            return "ml-100k"
        if "ratings.dat" in names:
            return "ml-1m"
        if "ratings.csv" in names and "movies.csv" in names:
            return "ml-latest"
    if cfg.source == "movielens":
        raise DataError(f"{cfg.path}: no MovieLens files (u.data, ratings.dat or ratings.csv+movies.csv)")
    return "events"


def plan_source(cfg: DataConfig, path: str | None = None) -> SourcePlan:
    """Find, check and chunk the log at ``path or cfg.path``; load the item catalog."""
    root = path or cfg.path
    if root is None:
        raise DataError("data.path is not set (the synthetic source is generated by the pipeline)")
    kind = "events" if path is not None or cfg.source == "events" else detect_kind(cfg)
    if kind == "ml-100k":
        return _plan_ml100k(cfg, root)
    if kind == "ml-1m":
        return _plan_ml1m(cfg, root)
    if kind == "ml-latest":
        return _plan_mllatest(cfg, root)
    return _plan_events(cfg, root)


def _text_chunks(cfg: DataConfig, uri: str, fmt: str, names: tuple[str, ...], header: bool,
                 encoding: str, mapping: dict[str, str], delimiter: str) -> list[Chunk]:
    fs, path = resolve_fs(uri)
    size = _size(fs, path)
    if size == 0:
        raise DataError(f"{uri}: file is empty")
    step = cfg.read_chunk_bytes
    return [
        Chunk(uri, fmt, s, min(s + step, size), names, header and s == 0, encoding,
              tuple(mapping.items()), delimiter)
        for s in range(0, size, step)
    ]


def _first_line(uri: str, encoding: str) -> str:
    fs, path = resolve_fs(uri)
    with fs.open_input_file(path) as f:
        head = f.read_at(min(f.size(), 1 << 16), 0)
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        return line.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{uri}: header line is not valid {encoding}: {exc}") from None


def _plan_movielens_text(
    cfg: DataConfig, root: str, name: str, data_file: str, fmt: str, names: tuple[str, ...],
    sep: str, catalog_file: str, read_catalog, bytes_per_row: int,
) -> SourcePlan:
    """ml-100k / ml-1m: headerless latin-1 ratings (user, item, rating, ts) + optional catalog."""
    data = join(root, data_file)
    chunks = _text_chunks(cfg, data, fmt, names, False, "latin-1",
                          {"user_id": "user", "item_id": "item", "rating": "rating",
                           "timestamp": "ts"}, sep)
    catalog = None
    item_file = join(root, catalog_file)
    fs, p = resolve_fs(item_file)
    if fs.get_file_info(p).type == pafs.FileType.File:
        catalog = read_catalog(item_file)
    return SourcePlan(name, root, [data], chunks, catalog, "int", True, False,
                      _size(fs, resolve_fs(data)[1]) // bytes_per_row)


def _plan_ml100k(cfg: DataConfig, root: str) -> SourcePlan:
    return _plan_movielens_text(cfg, root, "ml-100k", "u.data", "tsv", ("user", "item", "rating", "ts"),
                                "\t", "u.item", _catalog_ml100k, 12)


def _plan_ml1m(cfg: DataConfig, root: str) -> SourcePlan:
    # '::' is split as ':' so every row has 7 fields, the even ones empty.
    names = ("user", "_s1", "item", "_s2", "rating", "_s3", "ts")
    return _plan_movielens_text(cfg, root, "ml-1m", "ratings.dat", "dat", names, ":", "movies.dat",
                                _catalog_ml1m, 20)


def _plan_mllatest(cfg: DataConfig, root: str) -> SourcePlan:
    data = join(root, "ratings.csv")
    header = _first_line(data, "utf-8")
    names = tuple(c.strip() for c in header.split(","))
    need = ("userId", "movieId", "rating", "timestamp")
    missing = [c for c in need if c not in names]
    if missing:
        raise DataError(f"{data}: missing column(s) {missing}; header is {list(names)}")
    chunks = _text_chunks(cfg, data, "csv", names, True, "utf-8",
                          {"user_id": "userId", "item_id": "movieId", "rating": "rating",
                           "timestamp": "timestamp"}, ",")
    tags = join(root, "tags.csv")
    fs, p = resolve_fs(tags)
    catalog = _catalog_mllatest(join(root, "movies.csv"),
                                tags if fs.get_file_info(p).type == pafs.FileType.File else None)
    extra = {data: [c for c in names if c not in need]}
    return SourcePlan("ml-latest", root, [data], chunks, catalog, "int", True, False,
                      _size(fs, resolve_fs(data)[1]) // 25, {k: v for k, v in extra.items() if v})


def _plan_events(cfg: DataConfig, root: str) -> SourcePlan:
    files = list_files(root)
    cols = cfg.columns
    mapping = {"user_id": cols.user, "item_id": cols.item, "timestamp": cols.timestamp}
    if cols.rating:
        mapping["rating"] = cols.rating
    if cols.event:
        mapping["event"] = cols.event
    chunks: list[Chunk] = []
    extra: dict[str, list[str]] = {}
    est = 0
    for uri in files:
        fmt = cfg.format if cfg.format != "auto" else _format_of(uri)
        names = _columns_of(uri, fmt, cfg.encoding)
        # rating and event are optional as long as one of them is there
        required = [mapping[c] for c in ("user_id", "item_id", "timestamp")]
        missing = [c for c in required if c not in names]
        optional = [mapping[c] for c in ("rating", "event") if c in mapping]
        if optional and not any(c in names for c in optional):
            missing.append(" or ".join(optional))
        if missing:
            raise DataError(f"{uri}: missing column(s) {missing}; the file has {list(names)}")
        present = {k: v for k, v in mapping.items() if v in names}
        extra_cols = [c for c in names if c not in present.values()]
        if extra_cols:
            extra[uri] = extra_cols
        if fmt == "parquet":
            fs, path = resolve_fs(uri)
            meta = pq.ParquetFile(fs.open_input_file(path)).metadata
            if meta.num_rows == 0:
                raise DataError(f"{uri}: file is empty (0 rows)")
            est += meta.num_rows
            groups, acc, first = [], 0, 0
            for g in range(meta.num_row_groups):
                acc += meta.row_group(g).num_rows
                if acc >= 500_000 or g == meta.num_row_groups - 1:
                    groups.append((first, g + 1))
                    first, acc = g + 1, 0
            chunks += [Chunk(uri, "parquet", a, b, names, False, "", tuple(present.items()))
                       for a, b in groups]
        else:
            delim = "\t" if fmt == "tsv" else ","
            new = _text_chunks(cfg, uri, fmt, names, fmt in ("csv", "tsv"), cfg.encoding,
                               present, delim)
            est += sum(c.end - c.start for c in new) // 40
            chunks += new
    catalog = load_catalog(cfg) if cfg.catalog.path else None
    return SourcePlan("events", root, files, chunks, catalog, cols.id_type,
                      "rating" in mapping, "event" in mapping, est, extra)


def list_files(root: str) -> list[str]:
    """The data files at ``root`` (a file, or a directory searched recursively), sorted."""
    fs, path = resolve_fs(root)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{root}: data path not found")
    if info.type == pafs.FileType.File:
        return [root]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(
        _with_scheme(root, i.path) for i in infos
        if i.type == pafs.FileType.File and not posixpath.basename(i.path).startswith((".", "_"))
        and posixpath.splitext(i.path)[1].lower() in _EXTENSIONS
    )
    if not files:
        raise DataError(f"{root}: no csv/tsv/parquet/jsonl files found")
    return files


def _format_of(uri: str) -> str:
    ext = posixpath.splitext(uri)[1].lower()
    if ext not in _EXTENSIONS:
        raise DataError(f"{uri}: unknown file format {ext!r}; set data.format")
    return _EXTENSIONS[ext]


def _columns_of(uri: str, fmt: str, encoding: str) -> tuple[str, ...]:
    fs, path = resolve_fs(uri)
    if _size(fs, path) == 0:
        raise DataError(f"{uri}: file is empty")
    if fmt == "parquet":
        try:
            return tuple(pq.read_schema(fs.open_input_file(path)).names)
        except Exception as exc:  # a truncated or non-Parquet file
            raise DataError(f"{uri}: cannot read Parquet: {exc}") from None
    if fmt == "jsonl":
        line = _first_line(uri, encoding)
        try:
            first = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{uri}: first line is not JSON: {exc}") from None
        if not isinstance(first, dict):
            raise DataError(f"{uri}: JSON Lines rows must be objects")
        return tuple(first)
    delim = "\t" if fmt == "tsv" else ","
    header = _first_line(uri, encoding)
    if not header.strip():
        raise DataError(f"{uri}: file has no header line")
    return tuple(c.strip().strip('"') for c in header.split(delim))


# ----------------------------------------------------------------------------- reading


def read_chunk(chunk: Chunk) -> tuple[pa.Table, pa.Table]:
    """Read one chunk into (raw canonical string table with ``_row``, rejects table)."""
    try:
        if chunk.fmt == "parquet":
            return _read_parquet(chunk), _empty_rejects()
        data = read_line_range(chunk.path, chunk.start, chunk.end)
        if chunk.fmt == "jsonl":
            return _read_jsonl(chunk, data)
        return _read_delimited(chunk, data)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{chunk.source}: cannot read {chunk.fmt}: {exc}") from exc


def _canonical(table: pa.Table, chunk: Chunk, rows: np.ndarray) -> pa.Table:
    mapping = dict(chunk.mapping)
    cols = {}
    for c in RAW_COLUMNS:
        src = mapping.get(c)
        if src is None or src not in table.column_names:
            cols[c] = pa.nulls(table.num_rows, pa.string())
        else:
            col = table.column(src)
            if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
                col = pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())  # unix seconds
            cols[c] = col if col.type == pa.string() else pc.cast(col, pa.string())
    cols["_row"] = pa.array(rows, pa.int64())
    return pa.table(cols)


def _read_parquet(chunk: Chunk) -> pa.Table:
    fs, path = resolve_fs(chunk.path)
    pf = pq.ParquetFile(fs.open_input_file(path))
    mapping = dict(chunk.mapping)
    cols = [c for c in mapping.values() if c in pf.schema_arrow.names]
    table = pf.read_row_groups(list(range(chunk.start, chunk.end)), columns=cols)
    first = sum(pf.metadata.row_group(g).num_rows for g in range(chunk.start))
    table = table.combine_chunks()
    return _canonical(table, chunk, np.arange(first, first + table.num_rows))


def _read_delimited(chunk: Chunk, data: bytes) -> tuple[pa.Table, pa.Table]:
    bad: list[tuple[int, str]] = []

    def on_invalid(row) -> str:
        bad.append((row.number if row.number is not None else -1, row.text))
        return "skip"

    latin = chunk.encoding.lower().replace("_", "-") in ("latin-1", "latin1", "iso-8859-1")
    col_type = pa.string() if latin else pa.binary()
    skip = 1 if chunk.header else 0
    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=list(chunk.names), skip_rows=skip,
                                       use_threads=False, block_size=1 << 26,
                                       encoding="latin-1" if latin else "utf8"),
        parse_options=pacsv.ParseOptions(delimiter=chunk.delimiter, invalid_row_handler=on_invalid,
                                          quote_char=False if chunk.fmt in ("tsv", "dat") else '"'),
        convert_options=pacsv.ConvertOptions(column_types={n: col_type for n in chunk.names},
                                             strings_can_be_null=False),
    )
    n_total = table.num_rows + len(bad)
    numbers = np.arange(1 + skip, 1 + skip + n_total)
    bad_numbers = np.array([b[0] for b in bad], dtype=np.int64)
    rows = numbers[~np.isin(numbers, bad_numbers)] if len(bad) else numbers
    rejects = [_reject(chunk.source, n, "wrong_field_count",
                       f"expected {len(chunk.names)} fields", text) for n, text in bad]
    if chunk.fmt == "dat":  # a stray ':' inside '::' separated fields
        seps = [pc.not_equal(pc.binary_length(table.column(s)) if not latin else
                             pc.utf8_length(table.column(s)), 0) for s in ("_s1", "_s2", "_s3")]
        wrong = pc.or_(pc.or_(seps[0], seps[1]), seps[2]).to_numpy(zero_copy_only=False)
        if wrong.any():
            idx = np.flatnonzero(wrong)
            for i in idx:
                raw = ":".join(_as_text(table.column(n)[int(i)].as_py()) for n in chunk.names)
                rejects.append(_reject(chunk.source, int(rows[i]), "wrong_field_count",
                                       "expected user::item::rating::timestamp", raw))
            keep = np.flatnonzero(~wrong)
            table, rows = table.take(keep), rows[keep]
    if not latin:
        table, rows, enc_rejects = _decode_utf8(table, rows, chunk)
        rejects += enc_rejects
    return _canonical(table, chunk, rows), _rejects_table(rejects)


def _decode_utf8(table: pa.Table, rows: np.ndarray, chunk: Chunk):
    """Cast binary columns to string; rows with invalid UTF-8 become 'bad_encoding' rejects."""
    used = [c for _, c in chunk.mapping if c in table.column_names]
    table = table.select(used)
    bad = np.zeros(table.num_rows, dtype=bool)
    for name in used:
        try:
            pc.cast(table.column(name), pa.string())
        except pa.ArrowInvalid:
            values = table.column(name).to_pylist()
            for i, v in enumerate(values):
                try:
                    v.decode("utf-8")
                except UnicodeDecodeError:
                    bad[i] = True
    rejects = []
    if bad.any():
        for i in np.flatnonzero(bad):
            raw = ",".join(v.decode("latin-1") for v in (table.column(n)[int(i)].as_py() for n in used))
            rejects.append(_reject(chunk.source, int(rows[i]), "bad_encoding",
                                   f"not valid {chunk.encoding}", raw))
        keep = np.flatnonzero(~bad)
        table, rows = table.take(keep), rows[keep]
    table = pa.table({n: pc.cast(table.column(n), pa.string()) for n in used})
    return table, rows, rejects


def _read_jsonl(chunk: Chunk, data: bytes) -> tuple[pa.Table, pa.Table]:
    first_row = 1
    try:
        table = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(use_threads=False))
        mapping = dict(chunk.mapping)
        for c in mapping.values():
            if c in table.column_names and pa.types.is_nested(table.column(c).type):
                raise pa.ArrowInvalid(f"column {c} is nested")
        return _canonical(table, chunk, np.arange(first_row, first_row + table.num_rows)), _empty_rejects()
    except pa.ArrowInvalid:
        pass  # some line is broken: parse line by line and set the broken ones aside
    records, rows, rejects = [], [], []
    mapping = dict(chunk.mapping)
    for n, line in enumerate(data.split(b"\n"), start=first_row):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode(chunk.encoding))
            if not isinstance(obj, dict):
                raise ValueError("row is not an object")
        except UnicodeDecodeError as exc:
            rejects.append(_reject(chunk.source, n, "bad_encoding", str(exc), line.decode("latin-1")))
            continue
        except ValueError as exc:
            rejects.append(_reject(chunk.source, n, "bad_json", str(exc)[:200], line.decode("latin-1")))
            continue
        records.append({c: (None if obj.get(src) is None else str(obj.get(src)))
                        for c, src in mapping.items()})
        rows.append(n)
    table = pa.table({src: pa.array([r[c] for r in records], pa.string()) for c, src in mapping.items()})
    return _canonical(table, chunk, np.array(rows, dtype=np.int64)), _rejects_table(rejects)


def _as_text(v) -> str:
    if v is None:
        return ""
    return v.decode("latin-1") if isinstance(v, bytes) else str(v)


def _reject(source: str, row: int, reason: str, detail: str, raw: str) -> dict:
    return {"source": source, "row": int(row), "reason": reason, "detail": detail, "raw": raw}


REJECT_SCHEMA = pa.schema([("source", pa.string()), ("row", pa.int64()), ("reason", pa.string()),
                           ("detail", pa.string()), ("raw", pa.string())])
assert tuple(REJECT_SCHEMA.names) == REJECT_COLUMNS


def _rejects_table(rows: list[dict]) -> pa.Table:
    if not rows:
        return _empty_rejects()
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)


def _empty_rejects() -> pa.Table:
    return REJECT_SCHEMA.empty_table()


# ----------------------------------------------------------------------------- catalogs


def _catalog(ids: list[str], titles: list[str], genres: list[list[str]],
             tags: dict[str, list[str]] | None = None) -> pa.Table:
    tags = tags or {}
    cats = [next((g for g in gs if g and g not in ("unknown", "(no genres listed)")), "") for gs in genres]
    texts = [item_text(t, gs, tags.get(i, ())) for i, t, gs in zip(ids, titles, genres, strict=True)]
    table = pa.table({"item_id": pa.array(ids, pa.string()), "title": pa.array(titles, pa.string()),
                      "category": pa.array(cats, pa.string()), "text": pa.array(texts, pa.string())})
    return _unique_items(table)


def _unique_items(table: pa.Table) -> pa.Table:
    _, first = np.unique(table.column("item_id").to_numpy(zero_copy_only=False), return_index=True)
    return table.take(np.sort(first))


def _catalog_ml100k(uri: str) -> pa.Table:
    ids, titles, genres = [], [], []
    for line in read_bytes(uri).decode("latin-1").splitlines():
        parts = line.split("|")
        if len(parts) < 5 + len(ML100K_GENRES) or not parts[0].strip().isdigit():
            continue
        flags = parts[5:5 + len(ML100K_GENRES)]
        ids.append(str(int(parts[0])))
        titles.append(parts[1].strip())
        genres.append([g for g, f in zip(ML100K_GENRES, flags, strict=True) if f.strip() == "1"])
    return _catalog(ids, titles, genres)


def _catalog_ml1m(uri: str) -> pa.Table:
    ids, titles, genres = [], [], []
    for line in read_bytes(uri).decode("latin-1").splitlines():
        parts = line.split("::")
        if len(parts) < 3 or not parts[0].strip().isdigit():
            continue
        ids.append(str(int(parts[0])))
        titles.append("::".join(parts[1:-1]).strip())
        genres.append(parts[-1].strip().split("|"))
    return _catalog(ids, titles, genres)


def _read_csv_strings(uri: str, encoding: str = "utf8") -> pa.Table:
    data = read_bytes(uri)
    if not data.strip():
        raise DataError(f"{uri}: file is empty")
    try:
        return pacsv.read_csv(
            io.BytesIO(data), read_options=pacsv.ReadOptions(encoding=encoding),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=False,
                                                 column_types=None),
        )
    except pa.ArrowInvalid as exc:
        if encoding == "utf8" and "UTF8" in str(exc):
            return _read_csv_strings(uri, "latin-1")  # older MovieLens releases are latin-1
        raise DataError(f"{uri}: cannot read CSV: {exc}") from None


def _catalog_mllatest(movies: str, tags: str | None) -> pa.Table:
    table = _read_csv_strings(movies)
    for c in ("movieId", "title", "genres"):
        if c not in table.column_names:
            raise DataError(f"{movies}: missing column {c!r}")
    ids = [str(v) for v in pc.cast(table["movieId"], pa.string()).to_pylist()]
    tag_map: dict[str, list[str]] = {}
    if tags is not None:
        t = _read_csv_strings(tags)
        if {"movieId", "tag"} <= set(t.column_names):
            # the most frequent tags of each movie, ties by name
            counts = (pa.table({"item": pc.cast(t["movieId"], pa.string()),
                                "tag": pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(t["tag"], pa.string())))})
                      .group_by(["item", "tag"]).aggregate([("tag", "count")])
                      .sort_by([("item", "ascending"), ("tag_count", "descending"), ("tag", "ascending")]))
            for item, tag in zip(counts["item"].to_pylist(), counts["tag"].to_pylist(), strict=True):
                lst = tag_map.setdefault(item, [])
                if len(lst) < 3 and tag:
                    lst.append(tag)
    genres = [g.split("|") for g in pc.cast(table["genres"], pa.string()).to_pylist()]
    titles = pc.cast(table["title"], pa.string()).to_pylist()
    return _catalog(ids, titles, genres, tag_map)


def load_catalog(cfg: DataConfig) -> pa.Table:
    """A generic item catalog (csv/parquet/jsonl) -> CATALOG_COLUMNS with built item text."""
    cat = cfg.catalog
    assert cat.path is not None
    fmt = cat.format if cat.format != "auto" else _format_of(cat.path)
    fs, path = resolve_fs(cat.path)
    if _size(fs, path) == 0:
        raise DataError(f"{cat.path}: catalog file is empty")
    try:
        if fmt == "parquet":
            table = pq.read_table(fs.open_input_file(path))
        elif fmt == "jsonl":
            table = pajson.read_json(io.BytesIO(read_bytes(cat.path)))
        else:
            table = _read_csv_strings(cat.path)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{cat.path}: cannot read catalog: {exc}") from None
    needed = [cat.item, cat.title, *cat.text_fields] + ([cat.category] if cat.category else [])
    missing = [c for c in dict.fromkeys(needed) if c not in table.column_names]
    if missing:
        raise DataError(f"{cat.path}: catalog is missing column(s) {missing}; it has {table.column_names}")

    def col(name: str) -> list[str]:
        return ["" if v is None else str(v) for v in table[name].to_pylist()]

    ids = col(cat.item)
    if cfg.columns.id_type == "int":
        ids = [str(int(float(v))) if v.strip().lstrip("-").replace(".", "", 1).isdigit() else v for v in ids]
    titles = col(cat.title)
    cats = col(cat.category) if cat.category else [""] * len(ids)
    extra = [f for f in cat.text_fields if f not in (cat.title, cat.category)]
    extra_cols = [col(f) for f in extra]
    genres = [[c] if c else [] for c in cats]
    texts = []
    for i in range(len(ids)):
        base = item_text(titles[i], genres[i])
        more = [v[i] for v in extra_cols if v[i]]
        texts.append(" | ".join([base, *more]) if more else base)
    out = pa.table({"item_id": pa.array(ids, pa.string()), "title": pa.array(titles, pa.string()),
                    "category": pa.array(cats, pa.string()), "text": pa.array(texts, pa.string())})
    return _unique_items(out)
