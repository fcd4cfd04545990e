"""Files of a run, local or remote: one way to name, read and write them.

A location is a local path or a URI that pyarrow's filesystems read (``s3://bucket/prefix``,
``gs://...``, ``file://...``). S3 endpoints and credentials come from the usual AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3-compatible
server); Ray workers need them too (cluster environment, or the job's ``runtime_env``).

Libraries that only write local files write to bytes here (FAISS ``serialize_index``, numpy,
matplotlib) or into a temporary directory that is uploaded (Ray Train checkpoints); readers
that need a local directory (``from_pretrained``) get :func:`local_copy`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_uri(location: str) -> bool:
    return "://" in str(location)


_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it removed (``s3://KEY:SECRET@bucket`` ->
    ``s3://***@bucket``): what reports, logs and tracking may show."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", str(text))


def resolve_fs(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path in it) for a local path (made absolute) or a URI."""
    location = str(location)
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI alike."""
    return "/".join([str(base).rstrip("/"), *parts])


def _type(location: str) -> pafs.FileType:
    fs, path = resolve_fs(location)
    return fs.get_file_info(path).type


def exists(location: str) -> bool:
    return _type(location) != pafs.FileType.NotFound


def is_file(location: str) -> bool:
    return _type(location) == pafs.FileType.File


def is_dir(location: str) -> bool:
    return _type(location) == pafs.FileType.Directory


def read_bytes(location: str) -> bytes:
    """The whole file; FileNotFoundError when there is none."""
    fs, path = resolve_fs(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"{location}: no such file")
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str) -> str:
    return read_bytes(location).decode()


def write_bytes(location: str, data: bytes, durable: bool = False) -> str:
    """Write a whole file, creating its directory. Local files appear atomically (a hidden temp
    name in the same directory, then a rename); ``durable``: the bytes, then the rename, are
    fsynced before this returns (an acknowledged write survives a crash). Object stores publish
    an object only when its upload completes, durably."""
    fs, path = resolve_fs(location)
    parent, name = path.rsplit("/", 1) if "/" in path else (".", path)
    fs.create_dir(parent, recursive=True)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return str(location)
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}"  # readers list visible names only
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name says so
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(parent)  # ... and the rename too
    return str(location)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not supported on this filesystem
    finally:
        os.close(fd)


def write_text(location: str, text: str) -> str:
    return write_bytes(location, text.encode())


def write_table(table, location: str) -> str:
    """A pyarrow Table or pandas DataFrame as one Parquet file."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    fs, path = resolve_fs(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)
    return str(location)


def local_copy(location: str) -> str:
    """A local directory with ``location``'s files: local paths pass through; a URI is
    downloaded once per host into the temp dir, keyed by the URI and every file's path, size
    and modification time (a URI written again, e.g. a new run in the same bucket prefix,
    is downloaded again, never served stale)."""
    if not is_uri(location):
        return resolve_fs(location)[1]
    fs, path = resolve_fs(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{location}: no such directory")
    files = sorted((i.path, i.size, i.mtime_ns) for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                   if i.type == pafs.FileType.File)
    cache = os.path.join(tempfile.gettempdir(), "rayrec_cache")
    dest = os.path.join(cache, hashlib.sha1(repr((str(location), files)).encode()).hexdigest()[:16])
    if not os.path.isdir(dest):
        os.makedirs(cache, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="download_", dir=cache)
        pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        try:
            os.replace(tmp, dest)  # atomic: a concurrent reader sees all of it or nothing
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def remove(location: str) -> None:
    """Delete a file or directory tree (local or remote); nothing there is fine."""
    fs, path = resolve_fs(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)
