"""The endpoint's access to exploration policies: the shared bandit state actors.

Policies learn from feedback, so their state is shared by every ingress replica through one
named Ray actor per policy (``rayrec.explore.state``: the same policy classes and state
machine the experiments use). Serving adds one thing: the diversity method and weight are
chosen per request, while the learned per-arm / linear statistics stay shared.

The state heals: an actor that crashes is restarted by Ray (``max_restarts``) and one that is
killed is re-created on the next call; either way its constructor restores the last persisted
state. Every call has a timeout (``serve.policy_timeout_s``); a call that cannot be answered
raises :class:`PolicyUnavailable`, which the endpoint turns into a greedy slate on its own
scores (propensity 1, ``degraded_reason: policy_unavailable``) instead of an error.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import ray

from rayrec.config import RayrecConfig
from rayrec.explore.policies import Slate
from rayrec.explore.state import BanditState

log = logging.getLogger("ray.serve")

ACTOR_PREFIX = "rayrec_serving_bandit"
NAMESPACE = "rayrec"


class ServingBanditState(BanditState):
    """BanditState whose ``select`` takes the request's diversity settings."""

    def select_with(
        self, scores: np.ndarray, k: int, features: np.ndarray | None, arms: np.ndarray | None,
        request_id: str, diversity: str = "none", diversity_weight: float = 0.0,
    ) -> Slate:
        base = self.policy.cfg
        self.policy.cfg = base.model_copy(update={"diversity": diversity, "diversity_weight": diversity_weight})
        try:
            return self.select(scores, k, features, arms, embeddings=features, request_id=request_id)
        finally:
            self.policy.cfg = base

    def close(self) -> str | None:
        """Learn from every pending request, then persist."""
        for rid in list(self.pending):
            self.finalize(rid)
        return self.save()


ServingBanditActor = ray.remote(num_cpus=0, max_concurrency=1, max_restarts=-1)(ServingBanditState)


class PolicyUnavailable(RuntimeError):
    """The policy's state actor did not answer (dead, restarting or too slow)."""


async def _resolve(ref):
    return await ref


def state_path(cfg: RayrecConfig, policy: str) -> str:
    """Where a policy's serving state persists: one file per policy."""
    base = cfg.explore.state_path or f"{cfg.explore_dir.rstrip('/')}/bandit_state.pkl"
    stem, dot, ext = base.rpartition(".")
    return f"{stem}.{policy}.{ext}" if dot else f"{base}.{policy}"


class BanditClient:
    """select / feedback by policy name against the shared, persisted policy actors."""

    def __init__(self, cfg: RayrecConfig, app_name: str, seed: int = 0) -> None:
        self.cfg = cfg
        self.app_name = app_name
        self.seed = seed
        self.timeout_s = cfg.serve.policy_timeout_s
        self._actors: dict[str, Any] = {}
        self.recreated = 0  # actors found dead and re-created from their persisted state

    async def _call(self, policy: str, method: str, *args: Any) -> Any:
        """``actor.method(*args)`` with a timeout; a dead actor is re-created once and retried."""
        for attempt in range(2):
            ref = getattr(self.actor(policy), method).remote(*args)
            try:
                return await asyncio.wait_for(_resolve(ref), timeout=self.timeout_s)
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
        self, policy: str, scores: np.ndarray, k: int, features: np.ndarray, arms: np.ndarray,
        request_id: str, diversity: str = "none", diversity_weight: float = 0.0,
    ) -> Slate:
        return await self._call(policy, "select_with", scores, k, features, arms, request_id,
                                diversity, diversity_weight)

    async def feedback(self, policy: str, request_id: str, arm: int, reward: float) -> str:
        """Record a reward ("recorded", "duplicate" or "" if unknown, see
        BanditState.record_feedback); the policy learns when the request closes or expires."""
        return await self._call(policy, "record_feedback", request_id, arm, reward)

    async def feedback_any(self, request_id: str, arm: int, reward: float) -> tuple[str | None, str]:
        """Feedback for a request another ingress replica served: ask every live policy actor;
        returns (the policy that knew the request, its answer), or (None, "")."""
        from rayrec.explore.policies import POLICIES

        for policy in POLICIES:
            if policy not in self._actors:
                try:
                    self._actors[policy] = ray.get_actor(
                        f"{ACTOR_PREFIX}:{self.app_name}:{policy}", namespace=NAMESPACE)
                except ValueError:
                    continue
            try:
                status = await self._call(policy, "record_feedback", request_id, arm, reward)
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
        return out

    def close(self, timeout_s: float = 10.0) -> None:
        """Persist every policy this replica used (the actors keep running)."""
        refs = [a.close.remote() for a in self._actors.values()]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)


def kill_state_actors(app_name: str, policies: list[str]) -> None:
    """Persist and stop the detached policy actors of an app (after the app is deleted)."""
    for policy in policies:
        try:
            actor = ray.get_actor(f"{ACTOR_PREFIX}:{app_name}:{policy}", namespace=NAMESPACE)
        except ValueError:
            continue
        ray.get(actor.close.remote(), timeout=30)
        ray.kill(actor)
