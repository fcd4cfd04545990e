"""Write the main job's report: ``report.md`` for people, ``report.json`` for machines.

``<run_dir>/report.md``     tables, one sentence per section on what it shows, figure links
``<run_dir>/report/*.png``  the figures (linked relatively, so the folder can be moved)
``<run_dir>/report.json``   every stage's full result

``run_dir`` may be local or remote (:mod:`rayrec.storage`). The report needs no Ray: give it
the stage results as plain dicts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq

from rayrec import storage
from rayrec.report import plots, quality, sections

log = logging.getLogger(__name__)

MARKDOWN_FILE, JSON_FILE, FIGURE_DIR = "report.md", "report.json", "report"


NEW_ITEMS_STAGE = "new-items-evaluate"  # rayrec.recipes.newitems' last stage: the new-item protocol's report
NEW_ITEMS_TOWER_STAGE = "new-items-tower"


def _failure(results: dict[str, Any], stage: str, title: str) -> list[str]:
    error = next((r.get("error") for r in results.get("stages", []) if r["name"] == stage), None)
    return ["", f"## {title}", "", f"Not available: the {stage} stage failed ({error})."] if error else []


def _per_user(evaluation: dict[str, Any]):
    """The evaluation's per-user results (for CIs), when its file can be read."""
    location = (evaluation.get("files") or {}).get("per_user")
    if not location:
        return None
    try:
        fs, path = storage.resolve_fs(location)
        return pq.read_table(path, filesystem=fs).to_pandas()
    except (OSError, ValueError) as exc:
        log.warning("report: no per-user results at %s (%s): no CIs per model", location, exc)
        return None


def write_report(run_dir: str, results: dict[str, Any], metric: str = "ndcg@10") -> str:
    """Write the report under ``run_dir``; returns where report.md is.

    ``results``: ``seconds``, ``stages`` (name, seconds, reused, error), and the results of
    ``preprocess`` (manifest), ``train``, ``evaluate``, ``serve``, ``bandit`` and ``off-policy``
    (each may be None: that stage did not run or failed). ``metric``: training's validation metric.
    """
    figures: dict[str, str] = {}

    def figure(name: str, draw: Callable[[], bytes | None]) -> str | None:
        try:
            png = draw()
        except Exception as exc:  # a figure must never cost the report
            log.warning("report: figure %s failed: %s", name, exc)
            return None
        if png is None:
            return None
        storage.write_bytes(storage.join(run_dir, FIGURE_DIR, name), png)
        figures[name] = f"{FIGURE_DIR}/{name}"
        return figures[name]

    lines = sections.stages(results.get("stages", []), run_dir, results.get("seconds", 0.0))
    if manifest := results.get("preprocess"):
        lines += sections.data(manifest)
    if trained := results.get("train"):
        curve = figure("training.png", lambda: plots.training_curve(trained.get("history") or [], metric))
        lines += sections.training(trained, metric, curve)
    if evaluation := results.get("evaluate"):
        per_user = _per_user(evaluation)
        headline, rows = quality.model_rows(evaluation, per_user)
        bars = figure("quality.png", lambda: plots.metrics_vs_baselines(rows, headline))
        lines += quality.evaluation(evaluation, per_user, bars)
    else:
        lines += _failure(results, "evaluate", "Offline evaluation")
    if new_items := results.get(NEW_ITEMS_STAGE):
        lines += quality.evaluation(new_items, _per_user(new_items), None)
        if tower := results.get(NEW_ITEMS_TOWER_STAGE):
            lines += quality.item_tower(tower)
    else:
        lines += _failure(results, NEW_ITEMS_STAGE, "New items")
    if serving := results.get("serve"):
        lines += sections.serving(serving)
    else:
        lines += _failure(results, "serve", "Serving")
    if bandit := results.get("bandit"):
        policies = bandit.get("policies", {})
        lines += quality.exploration(bandit, figure("regret.png", lambda: plots.regret_curves(policies)),
                                     figure("tradeoff.png", lambda: plots.relevance_diversity(policies)))
    else:
        lines += _failure(results, "bandit", "Exploration experiment")
    if ope := results.get("off-policy"):
        lines += quality.off_policy(ope)
    else:
        lines += _failure(results, "off-policy", "Off-policy estimates from the endpoint's log")
    lines += ["", f"Every number above, in full: [{JSON_FILE}]({JSON_FILE})."]
    # a report is shared: no credentials of any URI in it (s3://KEY:SECRET@bucket)
    storage.write_text(storage.join(run_dir, JSON_FILE),
                       storage.redact(json.dumps({**results, "figures": figures}, indent=1, default=str)))
    return storage.write_text(storage.join(run_dir, MARKDOWN_FILE), storage.redact("\n".join(lines) + "\n"))
