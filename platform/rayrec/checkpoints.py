"""Which ranker checkpoint a run serves, and the pointers that decide it.

One resolver, :func:`served_checkpoint`, for every caller: the ranking deployment (at start and
on a switch), evaluation, the feedback loop and ``rayrec export``. In order:

  explicit   serve.checkpoint, evaluate.checkpoint, ``--checkpoint``, a switch's user_config
  promoted   ``<run_dir>/feedback/promoted.json``: the feedback loop's last promotion, as long as
             the training run it was promoted over is still the run's best (a newer
             ``rayrec train`` supersedes it) and the checkpoint is complete
  best       ``<checkpoint_dir>/best_checkpoint.json``: the training run's best by validation
  latest     the newest complete ``step_*`` under ``<checkpoint_dir>``

A pointer is data, never code: JSON with a schema check; an unreadable, stale or incomplete one
is skipped and the reason is part of the answer, so a restarted endpoint says what it serves
and why. Promotion (:func:`promote`) holds a lock and checks that the checkpoint it replaces is
still the one served (two feedback rounds cannot both win on a stale comparison).

A complete checkpoint (``step_XXXXXXXX/``) has ``manifest.json`` written last by rank 0,
naming every file of the servable model and the config with its size (an upload copies files
in any order, so no single file can mark the end).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pyarrow.fs as pafs

from rayrec import storage

STEP_RE = re.compile(r"^step_(\d{8})$")
MANIFEST_FILE = "manifest.json"
BEST_FILE = "best_checkpoint.json"  # <checkpoint_dir>/: the training run's best by validation
PROMOTED_FILE = "promoted.json"  # <run_dir>/feedback/: the feedback loop's last promotion
LEGACY_PROMOTED_FILE = "promoted_checkpoint"  # a bare path, written by rayrec before 2026-12
PROMOTED_KEYS = {"checkpoint", "over", "best_at_promotion", "promoted_at", "valid_ndcg@10"}


class Resolved(NamedTuple):
    """A checkpoint (None: the untuned backbone) and how it was chosen, in words."""

    path: str | None
    how: str


# ---------------------------------------------------------------- complete checkpoints


def is_complete(fs: pafs.FileSystem, ckpt_path: str) -> bool:
    """Every file the manifest names is there with its size (local or remote ``fs``)."""
    try:
        with fs.open_input_stream(f"{ckpt_path}/{MANIFEST_FILE}") as f:
            sizes = json.loads(f.read())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no manifest yet (in progress, interrupted) or a torn one
    infos = fs.get_file_info([f"{ckpt_path}/{rel}" for rel in sizes])
    return all(i.type == pafs.FileType.File and i.size == size
               for i, size in zip(infos, sizes.values(), strict=True))


def complete(location: str) -> bool:
    fs, path = storage.resolve_fs(location)
    return is_complete(fs, path)


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The most recently written complete checkpoint under ``checkpoint_dir`` (local or s3://),
    looking in ``<dir>/step_*`` and ``<dir>/<run_name>/step_*``; None when there is none."""
    fs, root = storage.resolve_fs(checkpoint_dir)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return None
    best: tuple[float, int, str] | None = None
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        dirs = [info]
        if info.type == pafs.FileType.Directory and not STEP_RE.match(info.base_name):
            dirs = fs.get_file_info(pafs.FileSelector(info.path, recursive=False))
        for d in dirs:
            m = STEP_RE.match(d.base_name)
            if d.type != pafs.FileType.Directory or not m or not is_complete(fs, d.path):
                continue  # not a checkpoint, or incomplete (still uploading or interrupted)
            marker = fs.get_file_info(f"{d.path}/{MANIFEST_FILE}")
            key = (marker.mtime.timestamp() if marker.mtime else 0.0, int(m.group(1)), d.path)
            best = key if best is None or key > best else best
    if best is None:
        return None
    scheme = checkpoint_dir.split("://", 1)[0] + "://" if "://" in checkpoint_dir else ""
    return scheme + best[2]


# ---------------------------------------------------------------- the training run's best


def record_best(checkpoint_dir: str, checkpoint: str, metric: str, value: float) -> None:
    """Point ``<checkpoint_dir>/best_checkpoint.json`` at the run's best checkpoint."""
    storage.write_text(storage.join(checkpoint_dir, BEST_FILE),
                       json.dumps({"checkpoint": checkpoint, "metric": metric, "value": value}))


def best_checkpoint(checkpoint_dir: str) -> Resolved:
    """The training run's best by validation when recorded and complete, else the latest
    complete checkpoint; ``(None, reason)`` when there is none."""
    try:
        best = json.loads(storage.read_text(storage.join(checkpoint_dir, BEST_FILE)))
        path = str(best["checkpoint"])
        if complete(path):
            return Resolved(path, f"best by {best['metric']} ({float(best['value']):.4f}) under {checkpoint_dir}")
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no run finished with validation, or the pointer is stale: the latest then
    latest = latest_checkpoint(checkpoint_dir)
    if latest is None:
        return Resolved(None, f"no complete checkpoint under {checkpoint_dir}")
    return Resolved(latest, f"latest under {checkpoint_dir}")


# ---------------------------------------------------------------- the feedback loop's promotion


def promoted_file(cfg) -> str:
    return cfg.path("feedback", PROMOTED_FILE)


def read_promoted(cfg, best: Resolved | None = None) -> Resolved:
    """The feedback loop's promotion when it still holds; ``(None, why not)`` otherwise.
    ``best``: the run's :func:`best_checkpoint` when the caller has it already."""
    where = promoted_file(cfg)
    legacy = cfg.path("feedback", LEGACY_PROMOTED_FILE)
    try:
        if storage.is_file(where):
            record = json.loads(storage.read_text(where))
            if not isinstance(record, dict) or not isinstance(record.get("checkpoint"), str) \
                    or set(record) - PROMOTED_KEYS:
                return Resolved(None, f"{where} is not a promotion record: ignored")
        elif storage.is_file(legacy):
            record = {"checkpoint": storage.read_text(legacy).strip()}
        else:
            return Resolved(None, "no feedback promotion")
    except (OSError, ValueError) as e:
        return Resolved(None, f"{where} unreadable ({e}): ignored")
    path = record["checkpoint"]
    best = best or best_checkpoint(cfg.checkpoint_dir)
    if "best_at_promotion" in record and record["best_at_promotion"] != best.path:
        return Resolved(None, f"the promotion of {path} was superseded by a newer training run")
    if not complete(path):
        return Resolved(None, f"promoted checkpoint {path} is incomplete or gone: ignored")
    return Resolved(path, f"promoted by the feedback loop ({where})")


def served_checkpoint(cfg, explicit: str | None = None) -> Resolved:
    """The ranker checkpoint this run serves: explicit, else promoted, else best, else latest.
    ``path`` None: no adapter, the untuned backbone (``how`` says why)."""
    if explicit:
        return Resolved(explicit, "configured")
    found = best_checkpoint(cfg.checkpoint_dir)
    promoted = read_promoted(cfg, found)
    if promoted.path:
        return promoted
    if found.path:
        why = "" if promoted.how == "no feedback promotion" else f"; {promoted.how}"
        return Resolved(found.path, found.how + why)
    return Resolved(None, f"{found.how}: untuned backbone {cfg.model.backbone}")


def version_id(checkpoint: str | None, backbone: str) -> str:
    """What answers and /healthz call the ranker that made them: an opaque, stable id. A
    storage path would name buckets and directories to every client."""
    name = checkpoint or f"untuned:{backbone}"
    return ("adapter-" if checkpoint else "untuned-") + hashlib.sha256(name.encode()).hexdigest()[:12]


@contextlib.contextmanager
def promotion_lock(cfg, timeout_s: float = 60.0) -> Iterator[None]:
    """One promotion at a time. A local run directory: an exclusive ``flock`` (every process on
    the host). An object store has no lock: the compare in :func:`promote` is then made right
    before the write, which narrows the race to that instant (say so in a multi-host setup)."""
    if storage.is_uri(cfg.run_dir):
        yield
        return
    path = cfg.path("feedback", ".promote.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another promotion holds {path} for more than {timeout_s:.0f}s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def promote(cfg, candidate: str, over: str, metrics: dict[str, Any]) -> Resolved:
    """Record ``candidate`` as served, if ``over`` (what the round compared against) is still
    what the run serves. Returns ``(candidate, how)`` when promoted, ``(None, why not)``."""
    with promotion_lock(cfg):
        now = served_checkpoint(cfg, cfg.serve.checkpoint).path
        if now != over:
            return Resolved(None, f"the served checkpoint changed during the round ({over} -> {now}): "
                                  "not promoted; run the round again")
        if not complete(candidate):
            return Resolved(None, f"candidate {candidate} is incomplete: not promoted")
        record = {"checkpoint": candidate, "over": over, "best_at_promotion": best_checkpoint(cfg.checkpoint_dir).path,
                  "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "valid_ndcg@10": metrics}
        storage.write_text(promoted_file(cfg), json.dumps(record, indent=1))
    return Resolved(candidate, f"promoted over {over}")
