"""The endpoint's access to exploration policies: the shared bandit state actors.

Policies learn from feedback, so their state is shared by every ingress replica through one
named Ray actor per policy (``rayrec.explore.state``: the same policy classes and state
machine the experiments use). Serving adds one thing: the diversity method and weight are
chosen per request, while the learned per-arm / linear statistics stay shared.

Selection stays off the actor's round trip: each ingress replica selects on a local copy of
the policy's learned statistics (the same ``Policy.select``), fetched from the actor at most
every ``serve.policy_sync_s`` seconds in the background, and registers the shown slate with the
actor without waiting for it. The statistics only change when a request finalizes (its
feedback window closes, ``explore.feedback_window_s``), so a copy a second old selects as the
actor would; the propensities logged are those of the copy that chose. ``policy_sync_s: 0``
selects on the actor itself, one round trip per request.

The state heals: an actor that crashes is restarted by Ray (``max_restarts``) and one that is
killed is re-created on the next call; either way its constructor restores the last persisted
state. Every call has a timeout (``serve.policy_timeout_s``); a call that cannot be answered
raises :class:`PolicyUnavailable`, which the endpoint turns into a greedy slate on its own
scores (propensity 1, ``degraded_reason: policy_unavailable``) instead of an error. A local
copy older than ``_STALE_SYNCS`` sync periods is refreshed before it selects, and counts as
unavailable when that refresh fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections import OrderedDict
from typing import Any

import numpy as np
import ray

from rayrec.config import RayrecConfig
from rayrec.explore.policies import POLICIES, Policy, Slate, make_policy
from rayrec.explore.state import BanditState, default_state_path, shown
from rayrec.serving.calls import wait_for

log = logging.getLogger("ray.serve")

ACTOR_PREFIX = "rayrec_serving_bandit"
NAMESPACE = "rayrec"


_STALE_SYNCS = 10  # a local copy this many sync periods old is unavailable (greedy fallback)


@contextlib.contextmanager
def request_diversity(policy: Policy, diversity: str, diversity_weight: float):
    """``policy`` with this request's diversity method and weight inside the block (the learned
    statistics are shared; the diversity settings are chosen per request)."""
    base = policy.cfg
    policy.cfg = base.model_copy(update={"diversity": diversity, "diversity_weight": diversity_weight})
    try:
        yield policy
    finally:
        policy.cfg = base


class ServingBanditState(BanditState):
    """BanditState whose ``select`` takes the request's diversity settings."""

    def select_with(
        self, scores: np.ndarray, k: int, features: np.ndarray | None, arms: np.ndarray | None,
        request_id: str, diversity: str = "none", diversity_weight: float = 0.0,
        embeddings: np.ndarray | None = None, new: np.ndarray | None = None, source: str | None = None,
    ) -> Slate:
        with request_diversity(self.policy, diversity, diversity_weight):
            return self.select(scores, k, features, arms, embeddings=embeddings, request_id=request_id, new=new,
                               source=source)

    def close(self) -> str | None:
        """Learn from every pending request, then persist."""
        for rid in list(self.pending):
            self.finalize(rid)
        return self.save()


ServingBanditActor = ray.remote(num_cpus=0, max_concurrency=1, max_restarts=-1)(ServingBanditState)


class PolicyUnavailable(RuntimeError):
    """The policy's state actor did not answer (dead, restarting or too slow)."""


def state_path(cfg: RayrecConfig, policy: str) -> str:
    """Where a policy's serving state persists: one file per policy."""
    base = default_state_path(cfg)
    stem, dot, ext = base.rpartition(".")
    return f"{stem}.{policy}.{ext}" if dot else f"{base}.{policy}"


class _LocalCopy:
    """A policy whose learned statistics are a copy of its actor's, with its own random stream."""

    def __init__(self, policy: Policy, state: dict[str, Any]) -> None:
        self.policy = policy
        self.refreshing: asyncio.Task | None = None
        self.lock = asyncio.Lock()
        self.load(state)

    def load(self, state: dict[str, Any]) -> None:
        own_rng = self.policy.rng.bit_generator.state  # draws stay this replica's, not the actor's
        self.policy.load_state_dict(state)
        self.policy.rng.bit_generator.state = own_rng
        self.synced_at = time.monotonic()


class BanditClient:
    """select / feedback by policy name against the shared, persisted policy actors."""

    def __init__(self, cfg: RayrecConfig, app_name: str, seed: int = 0, stream: str = "") -> None:
        self.cfg = cfg
        self.app_name = app_name
        self.seed = seed
        # Each ingress replica draws its own random numbers (sampled policies, epsilon).
        self.local_seed = zlib.crc32(f"{seed}:{app_name}:{stream}".encode())
        self.timeout_s = cfg.serve.policy_timeout_s
        self.sync_s = cfg.serve.policy_sync_s
        self._actors: dict[str, Any] = {}
        self._copies: dict[str, _LocalCopy] = {}
        # request_id -> (its registration with the actor, the arguments to retry it), awaited
        # before that request's first feedback.
        self._registering: OrderedDict[str, tuple[asyncio.Task, tuple]] = OrderedDict()
        self.recreated = 0  # actors found dead and re-created from their persisted state
        self.registration_failures = 0

    async def _call(self, policy: str, method: str, *args: Any) -> Any:
        """``actor.method(*args)`` with a timeout; a dead actor is re-created once and retried."""
        for attempt in range(2):
            ref = getattr(self.actor(policy), method).remote(*args)
            try:
                return await wait_for(ref, self.timeout_s)
            except TimeoutError:
                raise PolicyUnavailable(f"policy {policy!r} state did not answer in {self.timeout_s}s") from None
            except ray.exceptions.RayActorError as e:  # killed, crashed, node lost, restarting
                self._actors.pop(policy, None)
                if attempt:
                    raise PolicyUnavailable(f"policy {policy!r} state unavailable: {type(e).__name__}") from None
                self.recreated += 1
                log.warning("policy %s state actor unavailable (%s); re-creating it from %s", policy,
                            type(e).__name__, state_path(self.cfg, policy))
        raise AssertionError("unreachable")

    def actor(self, policy: str):
        if policy not in self._actors:
            # Detached: the state outlives ingress replicas that come and go with autoscaling.
            self._actors[policy] = ServingBanditActor.options(
                name=f"{ACTOR_PREFIX}:{self.app_name}:{policy}", namespace=NAMESPACE,
                get_if_exists=True, lifetime="detached",
            ).remote(policy, self.cfg.explore, state_path(self.cfg, policy), self.seed)
        return self._actors[policy]

    async def select(
        self, policy: str, scores: np.ndarray, k: int, features: np.ndarray | None, arms: np.ndarray,
        request_id: str, diversity: str = "none", diversity_weight: float = 0.0,
        embeddings: np.ndarray | None = None, new: np.ndarray | None = None, source: str | None = None,
    ) -> Slate:
        """The slate, chosen on this replica's copy of the policy (module docstring).
        ``features``: the policy's (``features.contextual_features``); ``embeddings``: the
        candidates' vectors for diversity; ``new``: which candidates are new items; ``source``:
        the client key id that asked (what it may teach: BanditState.finalize)."""
        embeddings = features if embeddings is None else embeddings
        if self.sync_s <= 0:
            return await self._call(policy, "select_with", scores, k, features, arms, request_id,
                                    diversity, diversity_weight, embeddings, new, source)
        copy = await self._local_copy(policy)

        def choose() -> Slate:
            with request_diversity(copy.policy, diversity, diversity_weight) as p:
                return p.select(scores, k, features, arms, embeddings=embeddings, new=new)

        # CPU-bound (sampled propensities with diversity: up to explore.max_propensity_steps
        # gain steps): in a worker thread, so the ingress's event loop keeps answering other
        # requests and probes; one selection per copy at a time (the copy is not thread-safe)
        async with copy.lock:
            slate = await asyncio.to_thread(choose)
        args = (policy, request_id, *shown(slate, scores, arms, features, new), source)
        self._registering[request_id] = (asyncio.create_task(self._register(*args)), args)
        while len(self._registering) > self.cfg.serve.request_cache_size:
            self._registering.popitem(last=False)
        return slate

    async def _local_copy(self, policy: str) -> _LocalCopy:
        copy = self._copies.get(policy)
        if copy is None:  # the first request of this policy waits for its state
            try:
                state = await self._call(policy, "state_dict")
            except PolicyUnavailable:
                raise
            except Exception as e:  # e.g. a state actor of an older rayrec, still running detached
                raise PolicyUnavailable(f"policy {policy!r} state unreadable: {type(e).__name__}: {e}") from e
            copy = self._copies.setdefault(
                policy, _LocalCopy(make_policy(policy, self.cfg.explore, self.local_seed), state))
        age = time.monotonic() - copy.synced_at
        if age > self.sync_s and copy.refreshing is None:
            copy.refreshing = asyncio.create_task(self._refresh(policy, copy))
        stale_s = _STALE_SYNCS * max(self.sync_s, self.timeout_s)
        if age > stale_s and copy.refreshing is not None:
            # Idle this long (or the actor unreachable): this request waits for the refresh.
            await copy.refreshing
            age = time.monotonic() - copy.synced_at
            if age > stale_s:
                raise PolicyUnavailable(f"policy {policy!r} state not synced for {age:.0f}s")
        return copy

    async def _refresh(self, policy: str, copy: _LocalCopy) -> None:
        try:
            state = await self._call(policy, "state_dict")
            async with copy.lock:  # not while a worker thread selects on it
                copy.load(state)
        except Exception as e:  # the copy ages; past _STALE_SYNCS periods requests degrade
            log.warning("policy %s: local copy not refreshed: %s", policy, e)
        finally:
            copy.refreshing = None

    async def _register(self, policy: str, request_id: str, shown: np.ndarray, shown_features: np.ndarray | None,
                        shown_scores: np.ndarray, shown_new: np.ndarray, source: str | None = None) -> bool:
        try:
            await self._call(policy, "register", request_id, shown, shown_features, shown_scores, shown_new, source)
            return True
        except Exception as e:  # unavailable (or broken): feedback retries it, then answers 503
            self.registration_failures += 1
            log.warning("request %s: slate not registered with policy %s: %s", request_id, policy, e)
            return False

    async def feedback(self, policy: str, request_id: str, arm: int, reward: float, source: str | None = None) -> str:
        """Record a reward ("recorded", "duplicate" or "" if unknown, see
        BanditState.record_feedback); the policy learns when the request closes or expires.
        Raises PolicyUnavailable when the slate never reached the policy's state."""
        entry = self._registering.pop(request_id, None)
        if entry is not None:
            task, args = entry
            if not await task and not await self._register(*args):  # failed: tried once more now
                self._registering[request_id] = (asyncio.create_task(self._register(*args)), args)
                raise PolicyUnavailable(f"request {request_id!r} is not yet registered with policy {policy!r}")
        return await self._call(policy, "record_feedback", request_id, arm, reward, source)

    async def feedback_any(self, request_id: str, arm: int, reward: float, source: str | None = None
                           ) -> tuple[str | None, str]:
        """Feedback for a request another ingress replica served: ask every live policy actor;
        returns (the policy that knew the request, its answer), or (None, "")."""
        for policy in POLICIES:
            if policy not in self._actors:
                try:
                    self._actors[policy] = ray.get_actor(
                        f"{ACTOR_PREFIX}:{self.app_name}:{policy}", namespace=NAMESPACE)
                except ValueError:
                    continue
            try:
                status = await self._call(policy, "record_feedback", request_id, arm, reward, source)
            except PolicyUnavailable:
                continue
            if status:
                return policy, status
        return None, ""

    async def stats(self) -> dict[str, Any]:
        """Each policy this replica uses: its state's stats, or why it is unavailable."""
        out: dict[str, Any] = {}
        for p in list(self._actors):
            try:
                out[p] = await self._call(p, "stats")
            except PolicyUnavailable as e:
                out[p] = {"error": str(e)}
            if p in self._copies:  # this replica's copy it selects on, and its slates not registered
                out[p] |= {"local_copy_age_s": round(time.monotonic() - self._copies[p].synced_at, 3),
                           "registration_failures": self.registration_failures}
        return out

    def close(self, timeout_s: float = 10.0) -> None:
        """Persist every policy this replica used (the actors keep running)."""
        refs = [a.close.remote() for a in self._actors.values()]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)


def learn_pending(app_name: str, policies: list[str], timeout_s: float = 60.0, kill: bool = False) -> int:
    """Have each live policy actor of an app learn every slate still awaiting feedback now (as
    its feedback window closing would) and persist, then stop it with ``kill``; returns how
    many actors there were."""
    done = 0
    for policy in policies:
        try:
            actor = ray.get_actor(f"{ACTOR_PREFIX}:{app_name}:{policy}", namespace=NAMESPACE)
        except ValueError:
            continue
        ray.get(actor.close.remote(), timeout=timeout_s)
        if kill:
            ray.kill(actor)
        done += 1
    return done


def kill_state_actors(app_name: str, policies: list[str]) -> None:
    """Persist and stop the detached policy actors of an app (after the app is deleted)."""
    learn_pending(app_name, policies, timeout_s=30, kill=True)
