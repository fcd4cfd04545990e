"""``run_tuning`` (`rayrec tune`): Ray Tune runs one retriever training per trial and keeps the
settings with the best validation figure.

Each trial is a Tune function that launches the retriever's own Ray Train run
(:func:`rayrec.seqrec.trainer.run_retriever_training`, the Train-inside-Tune pattern of Ray
Train V2) under ``<tune.out>/trials/<trial id>``; the function holds a token 0.01 CPU and trains in a task outside its placement group
(the Train workers hold the CPUs), so ``max_concurrent_trials`` x the retriever's workers must fit the cluster. The
score is the best validation ``retriever.early_stopping_metric`` of the run: only the train and
validation splits are read. The record says what was searched, on what budget, every trial's
figure and how to apply the choice; choosing from it never reads the test split.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import ray
import ray.tune
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rayrec import storage
from rayrec.config import RayrecConfig
from rayrec.runtime import init_ray, require_resources
from rayrec.seqrec.config import RetrieverConfig
from rayrec.seqrec.trainer import run_retriever_training

log = logging.getLogger(__name__)

RECORD_FILE = "record.json"
SCORE = "valid"  # what Tune compares: the trial's best validation metric
TRIAL_CPU = 0.01  # the trial function only waits on its Train run (Tune refuses an empty bundle)


def trial_config(cfg: RayrecConfig, params: dict[str, Any], trial_dir: str) -> RayrecConfig:
    """The run's config with one trial's retriever settings, its budget and its own directory."""
    tc = cfg.tune
    budget = {"max_epochs": tc.max_epochs or cfg.retriever.max_epochs,
              "max_minutes": tc.max_minutes or cfg.retriever.max_minutes}
    rc = RetrieverConfig.model_validate(cfg.retriever.model_dump() | budget | params
                                        | {"seed": tc.seed, "out": trial_dir, "run_name": "trial"})
    return cfg.model_copy(update={"retriever": rc})


# Tune runs a trial inside its placement group and captures the trial's child tasks into it:
# the retriever's Ray Data tasks and Train workers could never fit its token bundle. The
# training runs as a task outside any placement group instead (placement_group=None).
@ray.remote(num_cpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
def _train(cfg: dict[str, Any]) -> dict[str, Any]:
    return run_retriever_training(RayrecConfig.model_validate(cfg), serving_artifacts=False)


def _trial(params: dict[str, Any], base: dict[str, Any], trials_dir: str) -> None:
    """One Tune trial: train the retriever with ``params``; report its best validation figure.
    ``trials_dir`` is resolved by the driver: a trial runs in a working directory of Tune's."""
    cfg = RayrecConfig.model_validate(base)
    trial_dir = storage.join(trials_dir, ray.tune.get_context().get_trial_id())
    t0 = time.perf_counter()
    result = ray.get(_train.remote(trial_config(cfg, params, trial_dir).model_dump(mode="json")))
    metric = f"valid_{cfg.retriever.early_stopping_metric}"
    ray.tune.report({SCORE: float(result[metric]), "best_epoch": result.get("best_epoch"),
                     "epochs": (result.get("last") or {}).get("epoch"),
                     "seconds": round(time.perf_counter() - t0, 1)})


def param_space(cfg: RayrecConfig) -> dict[str, Any]:
    """Every combination (grid) when ``tune.num_samples`` is None, else random choices."""
    space = cfg.tune.search_space
    if cfg.tune.num_samples is None:
        return {k: ray.tune.grid_search(v) for k, v in space.items()}
    return {k: ray.tune.choice(v) for k, v in space.items()}


def run_tuning(cfg: RayrecConfig) -> dict[str, Any]:
    """Run the search; write and return the record (best settings first)."""
    init_ray(cfg.ray)
    tc, rc = cfg.tune, cfg.retriever
    require_resources({"CPU": float(rc.num_workers * tc.max_concurrent_trials)},
                      f"tuning ({tc.max_concurrent_trials} trial(s) x {rc.num_workers} retriever worker(s))",
                      hint="Lower tune.max_concurrent_trials or retriever.num_workers, or add nodes.")
    t0 = time.perf_counter()
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(ray.tune.with_parameters(
            _trial, base=cfg.model_copy(update={"run_dir": cfg.path()}).model_dump(mode="json"),
            trials_dir=storage.join(cfg.tune_dir, "trials")), {"CPU": TRIAL_CPU}),
        param_space=param_space(cfg),
        tune_config=ray.tune.TuneConfig(
            metric=SCORE, mode="max", num_samples=tc.num_samples or 1,
            search_alg=BasicVariantGenerator(random_state=tc.seed, max_concurrent=tc.max_concurrent_trials)),
        run_config=ray.tune.RunConfig(name="retriever", storage_path=storage.join(cfg.tune_dir, "ray"),
                                      verbose=0),
    )
    grid = tuner.fit()
    trials = []
    for r in grid:
        trials.append({"params": {k: r.config[k] for k in tc.search_space}, "error": str(r.error) if r.error else None,
                       **{k: (r.metrics or {}).get(k) for k in (SCORE, "best_epoch", "epochs", "seconds")}})
    trials.sort(key=lambda t: -(t[SCORE] if t[SCORE] is not None else float("-inf")))  # best first
    if trials[0][SCORE] is None:
        raise RuntimeError(f"every tuning trial failed: {[t['error'] for t in trials]}")
    best = trials[0]
    record = {
        "target": "retriever", "split_read": "train and validation only (the test split is never read)",
        "metric": f"best valid_{rc.early_stopping_metric} of each trial's run",
        "search_space": tc.search_space, "num_samples": tc.num_samples or "grid",
        "budget": {"max_epochs": tc.max_epochs or rc.max_epochs, "max_minutes": tc.max_minutes or rc.max_minutes,
                   "seed": tc.seed},
        "trials": trials, "best": best,
        "apply": " ".join(f"--set retriever.{k}={json.dumps(v)}" for k, v in best["params"].items()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    storage.write_text(storage.join(cfg.tune_dir, RECORD_FILE), json.dumps(record, indent=2))
    log.info("tuning: best %s = %.4f with %s (record: %s)", record["metric"], best[SCORE], best["params"],
             storage.join(cfg.tune_dir, RECORD_FILE))
    return record
