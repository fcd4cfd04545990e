"""The main job (`rayrec main`): from raw logs to a served, evaluated, exploring recommender.

The recipe, stage by stage: preprocess → index → train-retriever → train-tower (a text-grounded
retriever's item tower) → train → evaluate →
new items (:mod:`rayrec.recipes.newitems`, with ``evaluate.new_items.enabled``) → serve
(sample requests, simulated traffic with feedback: :mod:`rayrec.recipes.traffic`) → bandit
experiment → off-policy estimate from the endpoint's own log (:mod:`rayrec.recipes.logged_ope`)
→ report (:mod:`rayrec.report`). Each stage reuses its earlier result when its config is
unchanged (``--rebuild`` forces every stage). Stages after training degrade visibly: a failure
is recorded in the report and the run goes on. ``run_dir`` may be local or remote (``s3://``).
"""

from __future__ import annotations

import time
from typing import Any

from rayrec import storage, tracking
from rayrec.config import RayrecConfig
from rayrec.data.pipeline import run_preprocess
from rayrec.data.schema import MANIFEST_FILE
from rayrec.explore.experiment import run_experiment
from rayrec.itemtower.trainer import run_tower_training
from rayrec.recipes.logged_ope import estimate_from_event_log
from rayrec.recipes.newitems import run_new_item_protocol
from rayrec.recipes.seeds import run_headline_evaluation
from rayrec.recipes.traffic import serve_and_simulate
from rayrec.report import write_report
from rayrec.report.writer import FIGURE_DIR, JSON_FILE, MARKDOWN_FILE
from rayrec.retrieval.index import META_FILE, build_index
from rayrec.runtime import init_ray
from rayrec.seqrec.trainer import run_retriever_training
from rayrec.stages import StageRunner
from rayrec.train.trainer import run_training


def run_main(cfg: RayrecConfig, rebuild: bool = False) -> dict[str, Any]:
    """Run every stage on ``cfg`` and write ``<run_dir>/report.md``; returns a summary."""
    started = time.perf_counter()
    init_ray(cfg.ray)
    storage.write_text(cfg.path("config.yaml"), cfg.to_yaml())
    stages = StageRunner(cfg, rebuild=rebuild)
    data_cfg = ("data", "preprocess")

    stages.run("preprocess", lambda: run_preprocess(cfg), data_cfg,
               outputs=[storage.join(cfg.data_dir, MANIFEST_FILE)])
    stages.run("index", lambda: str(build_index(cfg)), (*data_cfg, "retrieval", "model"),
               outputs=[storage.join(cfg.index_dir, META_FILE)])
    if cfg.retriever.enabled:
        stages.run("train-retriever", lambda: run_retriever_training(cfg), (*data_cfg, "retriever"),
                   outputs=[cfg.retriever_model_dir, cfg.retriever_index_dir])
    if cfg.retriever.enabled and cfg.retriever.text_init and cfg.tower.enabled:
        stages.run("train-tower", lambda: run_tower_training(cfg),
                   (*data_cfg, "retrieval", "retriever", "tower", "train"), outputs=[cfg.tower_dir])
    stages.run("train", lambda: run_training(cfg), (*data_cfg, "model", "train", "retriever"),
               outputs=[cfg.checkpoint_dir])
    stages.run("evaluate", lambda: run_headline_evaluation(cfg),
               (*data_cfg, "model", "train", "retrieval", "retriever", "evaluate"),
               outputs=[cfg.eval_dir], required=False)
    if cfg.evaluate.new_items.enabled:  # the new-item protocol's own retrievers and tower
        run_new_item_protocol(cfg, stages, required=False)
    stages.run("serve", lambda: serve_and_simulate(cfg), reusable=False, required=False)
    stages.run("bandit", lambda: run_experiment(cfg), (*data_cfg, "explore"),
               outputs=[cfg.explore_dir], required=False)
    stages.run("off-policy", lambda: estimate_from_event_log(cfg), reusable=False, required=False)

    total = time.perf_counter() - started
    records = [{"name": r.name, "seconds": round(r.seconds, 1), "reused": r.reused, "error": r.error}
               for r in stages.records]
    results = {"run_dir": cfg.path(), "seconds": round(total, 1), "stages": records,
               **{r.name: r.result for r in stages.records}}
    report = write_report(cfg.path(), results, metric=cfg.train.early_stopping_metric)
    _track(cfg, records, total)
    print(f"\nrayrec main finished in {total:.0f}s. Report: {report}", flush=True)
    return {"report": report, "seconds": round(total, 1), "stages": records}


def _track(cfg: RayrecConfig, records: list[dict[str, Any]], total: float) -> None:
    """The run's report (markdown, JSON, figures) and stage times as one MLflow run, ``main``
    (training, evaluation and the bandit experiment log their own runs as they go)."""
    with tracking.start_run(cfg, "main", params={"run_dir": cfg.path()}) as run:
        run.log_metrics({f"seconds/{r['name']}": r["seconds"] for r in records} | {"seconds/total": total})
        for name in (MARKDOWN_FILE, JSON_FILE, FIGURE_DIR):
            run.log_artifacts(storage.join(cfg.path(), name), "report")
