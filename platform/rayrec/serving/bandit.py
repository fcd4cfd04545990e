"""The endpoint's access to exploration policies (the same classes experiments use).

Policies learn from feedback, so their state must be shared by every ingress replica: it
lives in the explore engineer's ``BanditStateActor`` (a named Ray actor) when available.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from rayrec.config import RayrecConfig
from rayrec.explore.policies import Policy, Slate, make_policy

log = logging.getLogger("ray.serve")


class BanditClient:
    """select/update by policy name; per-request diversity settings."""

    def __init__(self, cfg: RayrecConfig) -> None:
        self.cfg = cfg
        self._policies: dict[str, Policy] = {}
        self._lock = asyncio.Lock()

    def _policy(self, name: str) -> Policy:
        if name not in self._policies:
            self._policies[name] = make_policy(name, self.cfg.explore, seed=0)
        return self._policies[name]

    async def select(
        self, name: str, scores: np.ndarray, k: int, features: np.ndarray, arms: np.ndarray,
        diversity: str = "none", diversity_weight: float = 0.0, seed: Any = None,
    ) -> Slate:
        async with self._lock:
            policy = self._policy(name)
            base = policy.cfg
            policy.cfg = base.model_copy(update={"diversity": diversity, "diversity_weight": diversity_weight})
            try:
                return policy.select(scores, k, features, arms)
            finally:
                policy.cfg = base

    async def update(self, name: str, arms: list[int], rewards: list[float], features: np.ndarray) -> bool:
        async with self._lock:
            self._policy(name).update(np.asarray(arms), np.asarray(rewards), features)
        return True
