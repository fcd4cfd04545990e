"""Shared bandit learning state for serving: one Ray actor that every replica calls.

The actor owns one policy (``policies.make_policy``). Per request the endpoint calls
``select`` (which also remembers what was shown, with its features) and later
``record_feedback`` per clicked item; a request's impressions are learned from when
``finalize`` is called or when ``feedback_window_s`` has passed (items without feedback
count as reward 0). The state is written to ``path`` (local path or pyarrow URI) every
``persist_every`` updates and on ``close``, and restored from it on start.
"""

from __future__ import annotations

import os
import pickle
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import ray

from rayrec.explore.config import ExploreConfig
from rayrec.explore.policies import Slate, make_policy

STATE_ACTOR_NAME = "rayrec_bandit_state"


def _write_bytes(path: str, data: bytes) -> None:
    if "://" in path:
        import pyarrow.fs as pafs

        fs, p = pafs.FileSystem.from_uri(path)
        with fs.open_output_stream(p) as f:
            f.write(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # atomic: a crash never leaves a half-written state


def _read_bytes(path: str) -> bytes | None:
    if "://" in path:
        import pyarrow.fs as pafs

        fs, p = pafs.FileSystem.from_uri(path)
        if fs.get_file_info(p).type == pafs.FileType.NotFound:
            return None
        with fs.open_input_stream(p) as f:
            return f.read()
    target = Path(path)
    return target.read_bytes() if target.is_file() else None


def shown(slate: Slate, n: int, arms: np.ndarray | None,
          features: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The arm ids (default 0..n-1) and features of a slate's items, in slate order: what
    ``BanditState.register`` awaits feedback for."""
    arm_ids = np.arange(n) if arms is None else np.asarray(arms, np.int64)
    return arm_ids[slate.indices], None if features is None else np.asarray(features)[slate.indices]


class BanditState:
    """The plain-Python state machine behind the actor (also usable in-process)."""

    def __init__(self, policy_name: str, cfg: ExploreConfig, path: str | None, seed: int = 0):
        self.policy = make_policy(policy_name, cfg, seed)
        self.cfg, self.path = cfg, path
        self.pending: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.updates_since_save = 0
        self.total_updates = 0
        self.restored = False
        raw = _read_bytes(path) if path else None
        if raw is not None:
            saved = pickle.loads(raw)
            self.policy.load_state_dict(saved["policy"])
            self.total_updates = saved["total_updates"]
            self.restored = True

    def select(
        self, scores: np.ndarray, k: int, features: np.ndarray | None = None,
        arms: np.ndarray | None = None, embeddings: np.ndarray | None = None,
        request_id: str | None = None,
    ) -> Slate:
        self._expire()
        slate = self.policy.select(scores, k, features, arms, embeddings)
        if request_id is not None:
            self.register(request_id, *shown(slate, len(scores), arms, features))
        return slate

    def register(self, request_id: str, shown_arms: np.ndarray, shown_features: np.ndarray | None) -> None:
        """Await feedback for a slate (chosen here or by a client on a copy of this state):
        every shown arm learns its reward, 0 without feedback, when the request finalizes."""
        self._expire()
        shown = np.asarray(shown_arms, np.int64)
        self.pending[request_id] = {
            "t": time.time(), "arms": shown, "rewards": np.zeros(len(shown)),
            "features": None if shown_features is None else np.asarray(shown_features),
        }

    def state_dict(self) -> dict[str, Any]:
        """The policy's learned statistics (what a client's local copy selects with)."""
        return self.policy.state_dict()

    def record_feedback(self, request_id: str, arm: int, reward: float) -> str:
        """Set the reward of a shown arm of a pending request, once.

        Returns "recorded"; "duplicate" when this (request, arm) already has its reward (a
        retry or a replay: acknowledged, ignored, so one caller cannot multiply a reward);
        "" (falsy) when the request is unknown or expired, or the arm was not shown in it.
        """
        entry = self.pending.get(request_id)
        if entry is None:
            return ""
        hit = entry["arms"] == int(arm)
        if not hit.any():
            return ""
        rewarded = entry.setdefault("rewarded", set())
        if int(arm) in rewarded:
            return "duplicate"
        rewarded.add(int(arm))
        entry["rewards"][hit] = float(reward)
        return "recorded"

    def finalize(self, request_id: str) -> bool:
        entry = self.pending.pop(request_id, None)
        if entry is None:
            return False
        self.update(entry["arms"], entry["rewards"], entry["features"])
        return True

    def _expire(self) -> None:
        cutoff = time.time() - self.cfg.feedback_window_s
        while self.pending:
            rid, entry = next(iter(self.pending.items()))
            if entry["t"] > cutoff:
                break
            self.finalize(rid)

    def update(self, arms, rewards, features=None) -> None:
        self.policy.update(arms, rewards, features)
        self.total_updates += 1
        self.updates_since_save += 1
        if self.path and self.updates_since_save >= self.cfg.persist_every:
            self.save()

    def save(self) -> str | None:
        if not self.path:
            return None
        blob = {"policy": self.policy.state_dict(), "total_updates": self.total_updates,
                "saved_at": time.time()}
        _write_bytes(self.path, pickle.dumps(blob))
        self.updates_since_save = 0
        return self.path

    def stats(self) -> dict[str, Any]:
        return {"policy": self.policy.name, "total_updates": self.total_updates,
                "pending": len(self.pending), "restored": self.restored, "path": self.path}


@ray.remote(num_cpus=0, max_concurrency=1)
class BanditStateActor(BanditState):
    """Ray actor around :class:`BanditState`; call ``close`` to persist before killing it."""

    def close(self) -> str | None:
        """Finalize pending requests, persist; the actor stays usable."""
        for rid in list(self.pending):
            self.finalize(rid)
        return self.save()


def default_state_path(cfg) -> str:
    """``cfg.explore.state_path`` or ``<explore_dir>/bandit_state.pkl`` (cfg: RayrecConfig)."""
    return cfg.explore.state_path or f"{cfg.explore_dir.rstrip('/')}/bandit_state.pkl"


def get_or_create_state_actor(
    policy_name: str, cfg: ExploreConfig, path: str | None, seed: int = 0,
    name: str = STATE_ACTOR_NAME, namespace: str | None = None,
):
    """The named shared actor (created on first use; replicas get the same one)."""
    return BanditStateActor.options(
        name=f"{name}:{policy_name}", namespace=namespace, get_if_exists=True,
    ).remote(policy_name, cfg, path, seed)
