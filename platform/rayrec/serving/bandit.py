"""The endpoint's access to exploration policies: the shared bandit state actors.

Policies learn from feedback, so their state is shared by every ingress replica through one
named Ray actor per policy (``rayrec.explore.state``: the same policy classes and state
machine the experiments use). Serving adds one thing: the diversity method and weight are
chosen per request, while the learned per-arm / linear statistics stay shared.
"""

from __future__ import annotations

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


ServingBanditActor = ray.remote(num_cpus=0, max_concurrency=1)(ServingBanditState)


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
        self._actors: dict[str, Any] = {}

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
        return await self.actor(policy).select_with.remote(
            scores, k, features, arms, request_id, diversity, diversity_weight
        )

    async def feedback(self, policy: str, request_id: str, arm: int, reward: float) -> bool:
        """Record a reward; the policy learns when the request is finalised or expires."""
        return await self.actor(policy).record_feedback.remote(request_id, arm, reward)

    async def feedback_any(self, request_id: str, arm: int, reward: float) -> str | None:
        """Feedback for a request another ingress replica served: ask every live policy actor;
        returns the policy that knew the request, or None."""
        from rayrec.explore.policies import POLICIES

        for policy in POLICIES:
            if policy not in self._actors:
                try:
                    self._actors[policy] = ray.get_actor(
                        f"{ACTOR_PREFIX}:{self.app_name}:{policy}", namespace=NAMESPACE)
                except ValueError:
                    continue
            if await self._actors[policy].record_feedback.remote(request_id, arm, reward):
                return policy
        return None

    async def stats(self) -> dict[str, Any]:
        return {p: await a.stats.remote() for p, a in self._actors.items()}

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
