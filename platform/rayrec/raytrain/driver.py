"""The driver side of a Ray Train run: the workers' resources, checked before anything starts,
one :func:`fit` that every trainer runs its worker loop with, and the best checkpoint it kept.

Ray Train resumes a run from its latest checkpoint when one of the same name already lives
under the same storage path, and restarts workers (from the last checkpoint) up to
``max_failures`` times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from ray.train import (
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    Result,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.torch import TorchConfig, TorchTrainer

from rayrec.raytrain.config import DeepSpeedTraining
from rayrec.runtime import require_resources


def worker_resources(workers: DeepSpeedTraining) -> dict[str, float]:
    """What one training worker holds for the whole run."""
    return {"CPU": 1.0, **({"GPU": 1.0} if workers.use_gpu else {}), **workers.resources_per_worker}


def total_resources(workers: DeepSpeedTraining) -> dict[str, float]:
    """What all the workers hold together."""
    return {k: v * workers.num_workers for k, v in worker_resources(workers).items()}


def require_schedulable(workers: DeepSpeedTraining, section: str = "train") -> None:
    """Fail at once when the workers would hold every CPU the Ray Data read feeding them needs.

    The examples stream to the workers through Ray Data tasks that need a CPU of their own:
    with none left over, the read is back-pressured forever and the run waits without a word.
    ``section``: where ``workers`` is in the config (the error names its fields).
    """
    needs = total_resources(workers)
    needs["CPU"] = needs.get("CPU", 0.0) + 1.0  # one for the Ray Data read feeding the workers
    require_resources(
        needs, f"training ({section}.num_workers={workers.num_workers} x {worker_resources(workers)}, "
        "+ 1 CPU for the Ray Data read that feeds them)",
        hint=f"Lower {section}.num_workers or {section}.resources_per_worker (or {section}.use_gpu=false), "
        "or add capacity (more nodes, `ray start --num-cpus N`).")


def scaling_config(workers: DeepSpeedTraining) -> ScalingConfig:
    """Ray Train's scaling of ``workers``: count, GPU, resources and placement."""
    return ScalingConfig(num_workers=workers.num_workers, use_gpu=workers.use_gpu,
                         resources_per_worker=workers.resources_per_worker or None,
                         placement_strategy=workers.placement_strategy)


def fit(loop: Callable[[dict], None], loop_config: dict[str, Any], *, name: str, storage_path: str,
        scaling: ScalingConfig, max_failures: int, keep_checkpoints: int | None,
        score_attribute: str | None, score_order: Literal["max", "min"] = "max",
        callbacks: Sequence[UserCallback] = (), datasets: dict[str, Any] | None = None,
        datasets_to_split: list[str] | Literal["all"] = "all") -> Result:
    """Run ``loop(loop_config)`` on Ray Train workers (torch.distributed over nccl on GPUs, gloo
    on CPUs) as run ``name`` under ``storage_path``; raise its error if it failed.

    Ray keeps the ``keep_checkpoints`` best by the reported ``score_attribute`` (None: the
    newest) and always the latest, for resuming. ``datasets_to_split``: the datasets sharded
    across the workers; every worker reads the others whole.
    """
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=scaling,
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name, storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints,
                                               checkpoint_score_attribute=score_attribute,
                                               checkpoint_score_order=score_order),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=datasets_to_split),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    return result


def best_reported(result: Result, metric: str, order: Literal["max", "min"] = "max"):
    """(value, checkpoint, metrics) of the kept checkpoint best by ``metric``; None when no
    kept checkpoint reported it."""
    scored = [(m[metric], c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if not scored:
        return None
    return (max if order == "max" else min)(scored, key=lambda t: t[0])


def require_best(result: Result, metric: str, what: str, order: Literal["max", "min"] = "max"):
    """:func:`best_reported`, or an error saying that ``what`` has nothing to publish."""
    best = best_reported(result, metric, order)
    if best is None:
        raise RuntimeError(f"{what} reported no {metric}; nothing to publish")
    return best


def checkpoint_uri(checkpoint, storage_path: str) -> str | None:
    """A Ray checkpoint's location with ``storage_path``'s scheme (Ray gives a bare path)."""
    if checkpoint is None:
        return None
    if "://" in storage_path:
        return storage_path.split("://", 1)[0] + "://" + checkpoint.path
    return checkpoint.path
