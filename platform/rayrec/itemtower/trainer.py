"""``run_tower_training`` (`rayrec train-tower`): pairs from the trained retriever in the driver,
the LoRA tower tuned by Ray Train + DeepSpeed on shards of the warm items, the best checkpoint
by validation (held-out warm items, text only) published as ``<run_dir>/tower``; then the
retriever's index is rebuilt so that items without interactions are served from the tower.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rayrec import storage
from rayrec.config import RayrecConfig
from rayrec.data.store import load_items
from rayrec.itemtower.loop import VALID_METRIC, train_loop_per_worker
from rayrec.itemtower.pairs import tower_data
from rayrec.itemtower.vectors import build_text_grounded_index, tower_model_dir
from rayrec.raytrain.checkpoint import publish_checkpoint
from rayrec.raytrain.driver import (
    fit,
    require_best,
    require_schedulable,
    scaling_config,
    total_resources,
)
from rayrec.runtime import init_ray, warn_if_busy
from rayrec.seqrec.model import load_retriever
from rayrec.tracking import start_run
from rayrec.tracking.train import report_callbacks

log = logging.getLogger(__name__)


def run_tower_training(cfg: RayrecConfig) -> dict[str, Any]:
    """LoRA-tune ``tower.backbone`` so that item text lands where the retriever ranks the item."""
    init_ray(cfg.ray)
    tc, tr = cfg.tower, cfg.train
    require_schedulable(tr)
    model, _ = load_retriever(cfg.retriever_model_dir)
    items = load_items(cfg.data_dir)
    trained = items["popularity"].to_numpy() > 0
    data = tower_data(model, cfg.data_dir, items["text"].astype(str).tolist(), trained, tc.valid_fraction, tc.seed)
    head = None if model.text_proj is None else model.text_proj.weight.detach().numpy()
    if head is None:
        log.warning("the retriever is ID-only: the tower's head starts random (set retriever.text_init)")
    warn_if_busy(total_resources(tr), "item tower tuning")
    log.info("tuning the %s item tower for %d steps on %d worker(s): %d train items, %d validation items, "
             "%d user states", tc.backbone, tc.max_steps, tr.num_workers, len(data.train_items),
             len(data.valid_items), len(data.states))
    params = {"tower": tc.model_dump(mode="json"), "train_items": len(data.train_items),
              "valid_items": len(data.valid_items), "states": len(data.states), "num_workers": tr.num_workers}
    t0 = time.perf_counter()
    with start_run(cfg, "train-tower", params) as run:
        result = fit(
            train_loop_per_worker, {"cfg": cfg.model_dump(mode="json"), "data": data, "head": head},
            # a run of its own per call: a failed worker starts the tuning over (minutes
            # long), and a rerun with other settings never mixes with an earlier run's files
            name=f"{tc.run_name}_{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage.join(cfg.tower_dir, "runs"),
            scaling=scaling_config(tr), max_failures=tr.max_failures, keep_checkpoints=tc.keep_checkpoints,
            score_attribute=VALID_METRIC, callbacks=report_callbacks(run, "step"),
        )
        value, best, best_metrics = require_best(result, VALID_METRIC, "item tower tuning")
        start = best_metrics.get("start_" + VALID_METRIC, float("-inf"))
        # Served only where it adds: a tuned tower no better on validation than the frozen one it
        # started from is not published (and an older one is removed), so NewItemEncoder serves
        # the retriever's own frozen text part.
        tower = None
        storage.remove(tower_model_dir(cfg))
        if value > start:
            tower = publish_checkpoint(best, tower_model_dir(cfg))
        else:
            log.warning("the tuned item tower (validation %s %.4f) does not beat the frozen one (%.4f): "
                        "not published, new items keep the frozen text part", VALID_METRIC, value, start)
    index = build_text_grounded_index(cfg)
    return {"tower": tower or "not published: no better than the frozen tower on validation", "index": index,
            "best_step": best_metrics["step"], VALID_METRIC: value,
            "start_" + VALID_METRIC: best_metrics.get("start_" + VALID_METRIC),
            **{k: best_metrics.get(k) for k in best_metrics if k.startswith(("valid_", "start_valid_"))},
            "train_items": len(data.train_items), "valid_items": len(data.valid_items),
            "items_per_s": best_metrics.get("items_per_s"), "fit_seconds": round(time.perf_counter() - t0, 1),
            "run_dir": str(result.path)}
