"""Seeds in the headline (``evaluate.seeds``): the full-catalog evaluation of every system
trained under several seeds, reported per seed, as mean ± sd, and with each seed's paired CIs.

One run of one seed is one draw: with 610 users the 95% interval of an NDCG@10 is about ±0.015,
and a gain of a few thousandths is two users hit at rank 1 (Ferrari Dacrema et al. 2019, "Are
we really making much progress?"). So for seed k = 0..S-1:

  retriever   trained with ``retriever.seed + k`` (seed 0: the run's own retriever; seed k > 0:
              its own run under ``<retriever_dir>/seeds/<k>``, reused when unchanged)
  ALS         fit with ``evaluate.system_seed + k`` (validation-tuned each time)
  ranker      the run's served checkpoint re-scoring each seed's retriever (one training run:
              its own seeds are a training matter, ``rayrec train --set train.seed=...``)
  popularity, text retrieval   deterministic: the same lists every seed

The users, the split and the bootstrap are the same for every seed, so seed-to-seed spread is
the systems' own. A comparison's verdict is "above"/"below" only when every seed's paired CI
excludes 0 on that side, else "on par".
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from rayrec import storage
from rayrec.config import RayrecConfig
from rayrec.evaluation.evaluate import run_evaluation
from rayrec.evaluation.fullcatalog import run_full_catalog
from rayrec.seqrec.trainer import run_retriever_training
from rayrec.stages import StageRunner

SEEDS_FILE = "seeds.json"


def seed_config(cfg: RayrecConfig, k: int) -> RayrecConfig:
    """The run's config for seed ``k`` (k = 0: the run's own)."""
    ec = cfg.evaluate
    system_seed = (ec.seed if ec.system_seed is None else ec.system_seed) + k
    evaluate = ec.model_copy(update={"seeds": 1, "system_seed": system_seed,
                                     "out": cfg.eval_dir if k == 0 else storage.join(cfg.eval_dir, "seeds", str(k))})
    update: dict[str, Any] = {"evaluate": evaluate}
    if k:
        update["retriever"] = cfg.retriever.model_copy(update={
            "seed": cfg.retriever.seed + k, "out": storage.join(cfg.retriever_dir, "seeds", str(k))})
    return cfg.model_copy(update=update)


def run_headline_evaluation(cfg: RayrecConfig, stages: StageRunner | None = None) -> dict[str, Any]:
    """``rayrec evaluate`` and the main job's evaluate stage: over ``evaluate.seeds`` seeds on
    the full catalog, else the one evaluation (rayrec.evaluation.evaluate.run_evaluation)."""
    if cfg.evaluate.seeds > 1 and cfg.evaluate.candidates == "full":
        return run_seeded_evaluation(cfg, stages)
    return run_evaluation(cfg)


def run_seeded_evaluation(cfg: RayrecConfig, stages: StageRunner | None = None) -> dict[str, Any]:
    """Seed 0's full-catalog result (the usual shape, so reports read it as ever) with a
    ``seeds`` section: per seed, mean ± sd and the comparisons' verdicts over seeds."""
    stages = stages or StageRunner(cfg)
    has_retriever = storage.is_dir(cfg.retriever_model_dir)
    configs = [seed_config(cfg, k) for k in range(cfg.evaluate.seeds)]
    results = []
    for k, ck in enumerate(configs):
        if k and has_retriever:
            stages.run(f"train-retriever-seed{k}", lambda ck=ck: run_retriever_training(ck),
                       ("data", "preprocess", "retriever"), outputs=[ck.retriever_model_dir])
        results.append(run_full_catalog(ck))
    out = dict(results[0])
    out["seeds"] = summarize(results, configs)
    storage.write_text(storage.join(cfg.eval_dir, SEEDS_FILE), json.dumps(out["seeds"], indent=1))
    return out


def summarize(results: list[dict[str, Any]], configs: list[RayrecConfig]) -> dict[str, Any]:
    """Per-seed figures, mean ± sd (sd over seeds, ddof 1) and per-comparison verdicts."""
    metrics = ("ndcg@10", "hr@10")
    models = [m for m in results[0]["models"] if all(m in r["models"] for r in results)]
    per_seed = [{"retriever_seed": c.retriever.seed, "system_seed": c.evaluate.system_seed,
                 "models": {m: {x: r["models"][m].get(x) for x in metrics} for m in models},
                 "comparisons": {name: {"delta": cmp["delta"], "ci95": cmp.get("ci95")}
                                 for name, cmp in r["comparisons"].items()}}
                for r, c in zip(results, configs, strict=True)]
    mean_sd = {m: {x: _mean_sd([s["models"][m][x] for s in per_seed]) for x in metrics} for m in models}
    comparisons = {}
    for name in results[0]["comparisons"]:
        runs = [s["comparisons"].get(name) for s in per_seed]
        if any(r is None for r in runs):
            continue
        comparisons[name] = {"delta": _mean_sd([r["delta"] for r in runs]),
                             "ci95_per_seed": [r["ci95"] for r in runs], "verdict": _verdict(runs)}
    return {"n": len(results), "metric": "ndcg@10", "per_seed": per_seed, "mean_sd": mean_sd,
            "comparisons": comparisons,
            "note": ("the same users, split and bootstrap for every seed; retriever and ALS retrained "
                     "per seed, the ranker's checkpoint the run's")}


def _mean_sd(values: list[float | None]) -> list[float | None]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return [None, None]
    return [statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None]


def _verdict(runs: list[dict[str, Any]]) -> str:
    """above / below when every seed's CI excludes 0 on that side; on par otherwise."""
    cis = [r.get("ci95") for r in runs]
    if any(ci is None for ci in cis):
        return "no CI"
    if all(lo > 0 for lo, _ in cis):
        return "above"
    if all(hi < 0 for _, hi in cis):
        return "below"
    return "on par"
