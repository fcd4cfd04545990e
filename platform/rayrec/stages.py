"""Stage bookkeeping for multi-stage runs: reuse what is built, rebuild what changed.

A stage stamps ``<run_dir>/stages/<name>.json`` (local or remote) with a hash of the config
sections it depends on and its result. A later run reuses the stage when the hash matches and
its outputs still exist, unless told to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

from rayrec import console, storage
from rayrec.config import RayrecConfig

log = logging.getLogger("rayrec")


def config_hash(cfg: RayrecConfig, sections: Sequence[str]) -> str:
    """Stable hash of the named config sections (e.g. ``("data", "preprocess")``)."""
    dumped = cfg.model_dump(mode="json")
    payload = json.dumps({s: dumped.get(s) for s in sections}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class StageRecord:
    name: str
    seconds: float
    reused: bool
    result: Any = None
    error: str | None = None


@dataclass
class StageRunner:
    """Runs named stages in order, printing progress, timing and reusing each."""

    cfg: RayrecConfig
    rebuild: bool = False
    records: list[StageRecord] = field(default_factory=list)

    @property
    def stamp_dir(self) -> str:
        return self.cfg.path("stages")

    def run(
        self,
        name: str,
        fn: Callable[[], Any],
        depends_on: Sequence[str] = (),
        outputs: Sequence[str] = (),
        reusable: bool = True,
        required: bool = True,
    ) -> Any:
        """Run (or reuse) one stage. A non-required stage that fails is recorded, not raised."""
        stamp = storage.join(self.stamp_dir, f"{name}.json")
        digest = config_hash(self.cfg, depends_on)
        index = len(self.records) + 1
        if reusable and not self.rebuild and storage.is_file(stamp):
            saved = json.loads(storage.read_text(stamp))
            if saved.get("hash") == digest and all(storage.exists(str(o)) for o in outputs):
                console.stage_reused(name, index, saved.get("finished"), saved.get("result"))
                self.records.append(StageRecord(name, 0.0, True, saved.get("result")))
                return saved.get("result")
        console.stage_start(name, index)
        start = time.perf_counter()
        try:
            result = fn()
            if is_dataclass(result):  # a stage's result is plain data (stamped as JSON, reported)
                result = asdict(result)
        except Exception as exc:
            seconds = time.perf_counter() - start
            self.records.append(StageRecord(name, seconds, False, None, f"{type(exc).__name__}: {exc}"))
            console.stage_failed(exc, continuing=not required)
            if required:
                raise
            return None
        seconds = time.perf_counter() - start
        console.stage_done(result)
        self.records.append(StageRecord(name, seconds, False, result))
        if reusable:
            storage.write_text(stamp, json.dumps(
                {"hash": digest, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "result": result},
                default=str, indent=2,
            ))
        return result
