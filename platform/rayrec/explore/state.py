"""Shared bandit learning state for serving: one Ray actor that every replica calls.

The actor owns one policy (``policies.make_policy``). Per request the endpoint calls
``select`` (which also remembers what was shown, with its features) and later
``record_feedback`` per clicked item; a request's impressions are learned from when
``finalize`` is called or when ``feedback_window_s`` has passed (items without feedback
count as reward 0). The state is written to ``path`` (local path or pyarrow URI) every
``persist_every`` updates and on ``close``, and restored from it on start.

The stored state is data, never code: an ``.npz`` of float/int arrays read with
``allow_pickle=False`` plus one JSON document for the scalars, checked against the policy it
is loaded into (name, keys, shapes). A file that fails the check is refused with an error,
not executed. At most ``explore.max_pending`` slates await feedback; past that the oldest is
learned early (its unclicked items as reward 0) and counted in ``evicted``.
"""

from __future__ import annotations

import io
import json
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import ray

from rayrec import storage
from rayrec.explore.config import ExploreConfig
from rayrec.explore.policies import Slate, make_policy
from rayrec.ratelimit import TokenBuckets

STATE_ACTOR_NAME = "rayrec_bandit_state"
MAX_SOURCES = 10_000  # keyed sources remembered as reporting (least recently reporting dropped)


def shown(slate: Slate, scores: np.ndarray, arms: np.ndarray | None, features: np.ndarray | None,
          new: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """The arm ids (default 0..n-1), features, model scores and new-item flags of a slate's
    items, in slate order: what ``BanditState.register`` awaits feedback for."""
    scores = np.asarray(scores, np.float64)
    arm_ids = np.arange(len(scores)) if arms is None else np.asarray(arms, np.int64)
    feats = None if features is None else np.asarray(features, np.float64)[slate.indices]
    flags = np.zeros(len(scores), bool) if new is None else np.asarray(new, bool)
    return arm_ids[slate.indices], feats, scores[slate.indices], flags[slate.indices]


_META = "__meta__"


def encode_state(state: dict[str, Any]) -> bytes:
    """A state dict as an .npz: each array under a key of its own, the rest of the structure
    (scalars, strings, nested dicts, the generator's state) one JSON document naming them."""
    arrays: dict[str, np.ndarray] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = value
            return {"__array__": key}
        if isinstance(value, dict):
            return {str(k): walk(v) for k, v in value.items()}
        if isinstance(value, np.generic):
            return value.item()
        return value

    meta = json.dumps(walk(state))
    buf = io.BytesIO()
    np.savez(buf, **arrays, **{_META: np.array(meta)})
    return buf.getvalue()


def decode_state(raw: bytes) -> dict[str, Any]:
    """The inverse of :func:`encode_state`. ``allow_pickle=False``: object arrays are refused,
    so a planted file can fail to load but never runs code."""
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop(_META)))
    except Exception as e:
        raise ValueError(f"policy state is not a rayrec state file (.npz + JSON): {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict) or any(a.dtype.kind not in "fiub" for a in arrays.values()):
        raise ValueError("policy state: malformed structure or non-numeric arrays")

    def build(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__array__"}:
                if value["__array__"] not in arrays:
                    raise ValueError(f"policy state names a missing array {value['__array__']!r}")
                return arrays[value["__array__"]]
            return {k: build(v) for k, v in value.items()}
        return value

    return build(meta)


class BanditState:
    """The plain-Python state machine behind the actor (also usable in-process)."""

    def __init__(self, policy_name: str, cfg: ExploreConfig, path: str | None, seed: int = 0):
        self.policy = make_policy(policy_name, cfg, seed)
        self.cfg, self.path = cfg, path
        self.pending: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.updates_since_save = 0
        self.total_updates = 0
        self.restored = False
        self.evicted = 0
        self.pending_bytes = 0
        # keyed sources (client key ids): those that gave feedback on their own slates (an LRU
        # set, bounded), and how many slates each may still teach
        self.reporting: OrderedDict[str, None] = OrderedDict()
        rate = cfg.source_updates_per_s
        self.budget = None if rate is None else TokenBuckets(rate, 60.0 * rate, clock=time.time)
        self.not_learned = {"never_reported": 0, "over_source_rate": 0}
        raw = storage.read_bytes(path) if path and storage.is_file(path) else None
        if raw is not None:
            saved = decode_state(raw)
            try:
                self.policy.load_state_dict(saved["policy"])
                self.total_updates = int(saved["total_updates"])
            except (KeyError, TypeError) as e:
                raise ValueError(f"policy state {path}: missing or malformed field {e}") from None
            self.restored = True

    def select(
        self, scores: np.ndarray, k: int, features: np.ndarray | None = None,
        arms: np.ndarray | None = None, embeddings: np.ndarray | None = None,
        request_id: str | None = None, new: np.ndarray | None = None, source: str | None = None,
    ) -> Slate:
        self._expire()
        slate = self.policy.select(scores, k, features, arms, embeddings, new)
        if request_id is not None:
            self.register(request_id, *shown(slate, scores, arms, features, new), source=source)
        return slate

    def register(self, request_id: str, shown_arms: np.ndarray, shown_features: np.ndarray | None,
                 shown_scores: np.ndarray | None = None, shown_new: np.ndarray | None = None,
                 source: str | None = None) -> None:
        """Await feedback for a slate (chosen here or by a client on a copy of this state):
        every shown arm learns its reward, 0 without feedback, when the request finalizes.
        ``source``: the client key id that asked (None: anonymous), see :meth:`finalize`."""
        self._expire()
        shown = np.asarray(shown_arms, np.int64)
        entry = {
            "t": time.time(), "arms": shown, "rewards": np.zeros(len(shown)), "source": source,
            # float32: k x d features are most of a slate's bytes (k=100, d=400: 160 kB)
            "features": None if shown_features is None else np.asarray(shown_features, np.float32),
            "scores": np.zeros(len(shown)) if shown_scores is None else np.asarray(shown_scores, np.float64),
            "new": np.zeros(len(shown), bool) if shown_new is None else np.asarray(shown_new, bool),
        }
        entry["bytes"] = sum(v.nbytes for v in entry.values() if isinstance(v, np.ndarray)) + 200
        self._drop(request_id)  # a request id registered again replaces its slate
        self.pending[request_id] = entry
        self.pending_bytes += entry["bytes"]
        # bounded whatever the traffic: in slates and in bytes, the oldest learned early
        limit = self.cfg.max_pending_mb * 2**20
        while len(self.pending) > self.cfg.max_pending or (self.pending_bytes > limit and len(self.pending) > 1):
            self.finalize(next(iter(self.pending)))
            self.evicted += 1

    def state_dict(self) -> dict[str, Any]:
        """The policy's learned statistics (what a client's local copy selects with)."""
        return self.policy.state_dict()

    def record_feedback(self, request_id: str, arm: int, reward: float, source: str | None = None) -> str:
        """Set the reward of a shown arm of a pending request, once.

        Returns "recorded"; "duplicate" when this (request, arm) already has its reward (a
        retry or a replay: acknowledged, ignored, so one caller cannot multiply a reward);
        "" (falsy) when the request is unknown or expired, or the arm was not shown in it.
        Feedback from the slate's own source marks that source as one that reports.
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
        if entry["source"] is not None and source == entry["source"]:
            self.reporting[source] = None
            self.reporting.move_to_end(source)
            if len(self.reporting) > MAX_SOURCES:  # sources are validated keys; bounded anyway
                self.reporting.popitem(last=False)
        return "recorded"

    def finalize(self, request_id: str) -> bool:
        """Learn a slate, unless its keyed source may not teach it: a source that never sent
        feedback on its own slates (its zeros would only demote what it was shown: one client
        flooding requests would steer everyone), or one past ``source_updates_per_s``."""
        entry = self._drop(request_id)
        if entry is None:
            return False
        reason = self._not_learnable(entry["source"])
        if reason:
            self.not_learned[reason] += 1
            return True
        self.update(entry["arms"], entry["rewards"], entry["features"], entry["scores"], entry["new"])
        return True

    def _drop(self, request_id: str) -> dict[str, Any] | None:
        entry = self.pending.pop(request_id, None)
        if entry is not None:
            self.pending_bytes -= entry["bytes"]
        return entry

    def _not_learnable(self, source: str | None) -> str | None:
        if source is None:
            return None
        if source not in self.reporting and not self.cfg.unreported_slates_learn:
            return "never_reported"
        if self.budget is not None and self.budget.take(source) is not None:
            return "over_source_rate"
        return None

    def _expire(self) -> None:
        cutoff = time.time() - self.cfg.feedback_window_s
        while self.pending:
            rid, entry = next(iter(self.pending.items()))
            if entry["t"] > cutoff:
                break
            self.finalize(rid)

    def update(self, arms, rewards, features=None, scores=None, new=None) -> None:
        self.policy.update(arms, rewards, features, scores, new)
        self.total_updates += 1
        self.updates_since_save += 1
        if self.path and self.updates_since_save >= self.cfg.persist_every:
            self.save()

    def save(self) -> str | None:
        if not self.path:
            return None
        blob = {"policy": self.policy.state_dict(), "total_updates": self.total_updates,
                "saved_at": time.time()}
        storage.write_bytes(self.path, encode_state(blob))  # atomic: never a half-written state
        self.updates_since_save = 0
        return self.path

    def stats(self) -> dict[str, Any]:
        return {"policy": self.policy.name, "total_updates": self.total_updates,
                "pending": len(self.pending), "pending_mb": round(self.pending_bytes / 2**20, 3),
                "evicted": self.evicted, "not_learned": dict(self.not_learned), "restored": self.restored}


@ray.remote(num_cpus=0, max_concurrency=1)
class BanditStateActor(BanditState):
    """Ray actor around :class:`BanditState`; call ``close`` to persist before killing it."""

    def close(self) -> str | None:
        """Finalize pending requests, persist; the actor stays usable."""
        for rid in list(self.pending):
            self.finalize(rid)
        return self.save()


def default_state_path(cfg) -> str:
    """``cfg.explore.state_path`` or ``<explore_dir>/bandit_state.npz`` (cfg: RayrecConfig)."""
    return cfg.explore.state_path or f"{cfg.explore_dir.rstrip('/')}/bandit_state.npz"


def get_or_create_state_actor(
    policy_name: str, cfg: ExploreConfig, path: str | None, seed: int = 0,
    name: str = STATE_ACTOR_NAME, namespace: str | None = None,
):
    """The named shared actor (created on first use; replicas get the same one)."""
    return BanditStateActor.options(
        name=f"{name}:{policy_name}", namespace=namespace, get_if_exists=True,
    ).remote(policy_name, cfg, path, seed)
