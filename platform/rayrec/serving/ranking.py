"""Ranking deployment: the fine-tuned ranker (base model + LoRA adapter) behind @serve.batch.

Concurrent requests are scored together by :meth:`rayrec.models.ranker.Ranker.score`, the
same scoring code used in training-time validation and offline evaluation. The adapter is
chosen by ``user_config["checkpoint"]``; ``reconfigure`` loads a new one fully before
swapping the reference, so requests in flight finish on the old model and none are dropped.

``user_config["fault_injection"]`` (test-only: ``{"raise": true}`` or ``{"sleep_s": 2.0}``)
makes scoring fail or stall so the ingress' degradation path can be exercised for real.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
import torch
from ray import serve
from ray.serve import metrics

from rayrec.checkpoints import served_checkpoint, version_id
from rayrec.config import validate_config
from rayrec.models.ranker import load_ranker

log = logging.getLogger("ray.serve")


def _device(num_gpus: float) -> str:
    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


@serve.deployment(name="Ranking")
class RankingDeployment:
    """Scores (history text, candidate texts) pairs in batches with the current adapter."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = validate_config(cfg, "serve ranking")
        rc = self.cfg.serve.ranking
        self.device = _device(rc.num_gpus)
        if self.device == "cpu":
            # Every core the replica reserves, no more: intra-op threads beyond its CPUs would
            # fight the other replicas on the node (Ray sets OMP_NUM_THREADS=1 below 1 CPU).

            torch.set_num_threads(max(1, int(rc.num_cpus)))
        self._score_batch.set_max_batch_size(rc.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(rc.batch_wait_timeout_s)
        self.ranker = None
        self.version: str | None = None  # the checkpoint path (or untuned:<backbone>)
        self.version_id: str | None = None  # its opaque id: what answers and /healthz show
        self.fault: dict[str, Any] = {}
        self.switch_error: str | None = None
        self._swap_lock = asyncio.Lock()
        self._batch_size = metrics.Histogram(
            "rayrec_rank_batch_size", description="Requests scored per ranker call.",
            boundaries=[1, 2, 4, 8, 16, 32, 64],
        )
        self._shed = metrics.Counter(
            "rayrec_rank_shed", description="Requests skipped: they could not finish before their deadline.")
        self._s_per_candidate = 0.0  # running mean of scoring seconds per candidate (shedding)
        self._score_latency = metrics.Histogram(
            "rayrec_rank_batch_latency_ms", description="Ranker forward time per batch.",
            boundaries=[5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000],
        )
        if not self._has_user_config():
            self._load(self.cfg.serve.checkpoint)

    @staticmethod
    def _has_user_config() -> bool:
        try:
            return serve.get_replica_context()._deployment_config.user_config is not None
        except Exception:  # outside a replica (direct construction)
            return False

    def _load(self, requested: str | None, resolved=None) -> None:
        """Load the adapter ``served_checkpoint`` picks (``resolved``: already picked)."""
        checkpoint, why = resolved or served_checkpoint(self.cfg, requested)
        t0 = time.perf_counter()
        ranker = load_ranker(self.cfg.model, checkpoint, device=self.device)  # remote: downloaded
        # Swap only once the new ranker is fully loaded: in-flight batches keep the old one.
        self.ranker, self.version = ranker, checkpoint or f"untuned:{self.cfg.model.backbone}"
        self.version_id = version_id(checkpoint, self.cfg.model.backbone)  # what clients see
        log.info("ranker loaded in %.1fs on %s (%s): %s (%s)", time.perf_counter() - t0, self.device,
                 ranker.precision, self.version, why)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``{"checkpoint": path|None, "fault_injection": {...}}`` without a restart."""
        unknown = set(user_config) - {"checkpoint", "fault_injection"}
        if unknown:
            raise ValueError(f"unknown ranking user_config keys: {sorted(unknown)}")
        fault = dict(user_config.get("fault_injection") or {})
        if set(fault) - {"raise", "sleep_s"}:
            raise ValueError(f"fault_injection accepts 'raise' and 'sleep_s', got {sorted(fault)}")
        requested = user_config.get("checkpoint")
        async with self._swap_lock:
            resolved = served_checkpoint(self.cfg, requested)
            current = self.version if self.ranker is not None else None
            if self.ranker is None or (resolved.path or f"untuned:{self.cfg.model.backbone}") != current:
                try:
                    await asyncio.to_thread(self._load, requested, resolved)
                    self.switch_error = None
                except Exception as e:
                    if self.ranker is None:  # nothing to fall back to: the replica cannot start
                        raise
                    # A bad new adapter must not take the endpoint down: keep serving the
                    # current one and report why the switch did not happen (info, /healthz).
                    self.switch_error = f"could not load {requested!r}: {e}"
                    log.error("adapter switch failed, still serving %s: %s", self.version, e)
        self.fault = fault

    def info(self) -> dict[str, Any]:
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:
            replica = None
        precision = self.ranker.precision if self.ranker is not None else None
        # "checkpoint" is for the operator's switch (a handle call); /healthz shows "version" only
        return {"version": self.version_id, "checkpoint": self.version,
                "device": self.device, "precision": precision,
                "fault_injection": self.fault,
                "replica": replica, "switch_error": self.switch_error}

    async def score(
        self, history_text: str, candidate_texts: list[str], candidate_priors: list | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Ranker scores for one request's candidates (with their priors, one value or F-vector
        each, see rayrec.models.prior.ranker_priors), plus the adapter version that made them.

        ``deadline`` (wall clock, when the caller stops waiting): a request still queued when it
        could no longer finish in time is skipped, ``{"shed": True}``, so an overloaded replica
        spends its CPU on answers someone is still waiting for."""
        if self.fault.get("raise"):
            raise RuntimeError("fault injection: ranking failure")
        if self.fault.get("sleep_s"):
            await asyncio.sleep(float(self.fault["sleep_s"]))
        scores, version, forward_ms = await self._score_batch(
            (history_text, candidate_texts, candidate_priors, deadline))
        if scores is None:
            return {"scores": None, "version": version, "shed": True}
        return {"scores": scores, "version": version, "forward_ms": forward_ms}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # real values set in __init__
    async def _score_batch(
        self, requests: list[tuple[str, list[str], list[float] | None, float | None]]
    ) -> list[tuple[np.ndarray | None, str, float]]:
        """(scores or None if shed, adapter version, this batch's forward time in ms) per request."""
        ranker, version = self.ranker, self.version_id
        t0 = time.perf_counter()
        # Shed what cannot finish in time: now + this batch's expected compute (seconds per
        # candidate, a running mean) past its deadline. The rest is scored as one batch.
        expected = self._s_per_candidate * sum(len(c) for _, c, _, _ in requests)
        now = time.time()
        keep = [i for i, (_, _, _, d) in enumerate(requests) if d is None or now + expected < d]
        if len(keep) < len(requests):
            self._shed.inc(len(requests) - len(keep))
        out: list[tuple[np.ndarray | None, str, float]] = [(None, version, 0.0)] * len(requests)
        if not keep:
            return out
        kept = [requests[i] for i in keep]
        histories = [h for h, _, _, _ in kept]
        candidates = [c for _, c, _, _ in kept]
        # A request without priors (an older ingress) scores with neutral priors of 0.
        n_priors = 0 if ranker.prior_weights is None else len(ranker.prior_weights)
        priors = [np.asarray(p, dtype=np.float32).reshape(len(c), -1) if p is not None
                  else np.zeros((len(c), max(n_priors, 1)), dtype=np.float32) for _, c, p, _ in kept]
        scores = await asyncio.to_thread(ranker.score, histories, candidates, priors)
        elapsed = time.perf_counter() - t0
        n = max(1, sum(len(c) for c in candidates))
        self._s_per_candidate = 0.8 * self._s_per_candidate + 0.2 * elapsed / n  # EWMA
        self._score_latency.observe(elapsed * 1000)
        self._batch_size.observe(len(keep))
        for i, s in zip(keep, scores, strict=True):
            out[i] = (np.asarray(s, dtype=np.float32), version, elapsed * 1000)
        return out
