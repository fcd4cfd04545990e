"""The main job's report from small synthetic stage results: tables and figures, no JSON, no Ray."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rayrec.report import write_report
from rayrec.report.sections import EXPLAINED_SAMPLE, GENERATED_SAMPLE

MODELS = {"retriever_ranker": 0.12, "retriever": 0.11, "popularity": 0.05, "als": 0.04}


def _band(n: int, slope: float) -> list[list[float]]:
    mean = np.cumsum(np.full(n, slope))
    return [mean.tolist(), (0.1 * np.sqrt(np.arange(1, n + 1))).tolist()]


def synthetic_results(tmp_path: Path) -> dict:
    per_user = pd.DataFrame([{"user_idx": u, "model": m, "ndcg@10": float(v * (u % 3)), "hr@10": float(u % 2)}
                             for m, v in MODELS.items() for u in range(30)])
    per_user.to_parquet(tmp_path / "per_user.parquet", index=False)
    policy = {"ctr": {"mean": 0.1, "ci95": 0.01}, "catalog_coverage": {"mean": 0.3, "ci95": 0.02},
              "intra_list_diversity": {"mean": 0.5, "ci95": 0.03}, "novelty": {"mean": 4.0, "ci95": 0.1},
              "categories_per_slate": {"mean": 2.0, "ci95": 0.1}}
    estimates = {"ips": {"estimate": 0.2, "lo": 0.1, "hi": 0.3, "se": 0.05, "n": 50},
                 "snips": {"estimate": 0.21, "lo": 0.15, "hi": 0.25, "se": 0.03, "n": 50}}
    return {
        "seconds": 12.0,
        "stages": [{"name": n, "seconds": 1.0, "reused": n == "preprocess", "error": None}
                   for n in ("preprocess", "train", "evaluate", "serve", "bandit", "off-policy")],
        "preprocess": {"counts": {"rows_read": 1000, "rows_kept": 900, "rows_rejected": 60,
                                  "rejected_by_reason": {"bad_timestamp": 40, "unknown_item": 20},
                                  "duplicates_removed": 30, "filtered_by_reason": {"kcore_user": 10, "kcore_item": 0},
                                  "interactions": {"train": 800, "valid": 50, "test": 50},
                                  "positives": {"train": 700, "valid": 50, "test": 50},
                                  "examples": {"train": 700, "valid": 50, "test": 50}, "users": 50, "items": 40},
                       "accounting": {"balanced": True}, "split": {"method": "leave_last_out"}},
        "train": {"checkpoint": "/ckpt/step_00000004", "best_checkpoint": "/ckpt/step_00000004",
                  "metrics": {"step": 4, "loss": 0.5},
                  "history": [{"step": s, "epoch": 0, "loss": 1.0 / s, "samples_per_s": 10.0,
                               **({"valid_ndcg@10": 0.1 * s} if s % 2 == 0 else {})} for s in range(1, 5)]},
        "evaluate": {"protocol": {"split": "test", "users": 30, "candidates": "full", "ks": [5, 10]},
                     "models": {m: {"ndcg@10": v, "hr@10": 2 * v, "mrr": v, "recall@20": 3 * v,
                                    "ms_per_user": 1.5, "coverage@10": 0.2, "novelty@10": 3.0}
                                for m, v in MODELS.items()},
                     "comparisons": {"retriever_vs_popularity": {"metric": "ndcg@10", "delta": 0.06, "wins": 9,
                                                                 "losses": 2, "ci95": [0.01, 0.1]}},
                     "files": {"per_user": str(tmp_path / "per_user.parquet")}},
        "serve": {"url": "http://127.0.0.1:8000", "samples": {
                      "known_user": {"client_ms": 41.2, "items": [{"title": "Toy Story", "scores": {"final": 0.9}}]},
                      "feedback": {"client_ms": 9.0, "recorded": True},
                      GENERATED_SAMPLE: {
                          "request": {"query": "space | kids", "k": 5, "source": "generative"},
                          "settings": {"backbone": "smollm2-135m", "k": 8, "beams": 8},
                          "client_ms": 3712.4, "retrieval_source": "generative", "degraded": False,
                          "latency_ms": {"retrieval": 3600.0, "ranking": 80.0, "total": 3700.0},
                          "items": [{"position": p, "title": t, "scores": {"retrieval": -2.5 - p, "final": 0.8 - p / 10}}
                                    for p, t in enumerate(["Moon | Kids (1990)", "Star Trip (2001)"])]},
                      EXPLAINED_SAMPLE: {
                          "request": {"user_id": "7", "k": 3, "explain": True},
                          "settings": {"backbone": "smollm2-135m", "explain_max_items": 2, "explain_budget_ms": 6000},
                          "client_ms": 2480.0, "latency_ms": {"explain": 2400.0, "total": 2470.0},
                          "items": [{"position": 0, "title": "Alien (1979)", "explanation_status": "explained",
                                     "explanation": "You might like Alien because you watched Aliens.",
                                     "scores": {"final": 0.9}},
                                    {"position": 1, "title": "Heat (1995)", "explanation_status": "ungrounded",
                                     "explanation": None, "scores": {"final": 0.8}},
                                    {"position": 2, "title": "Up (2009)", "explanation_status": "over_budget",
                                     "explanation": None, "scores": {"final": 0.7}}]}},
                  "traffic": {"requests": 20, "policy": "epsilon_greedy", "impressions": 100, "clicks": 7,
                              "ctr": 0.07, "degraded": 1, "errors": 0, "degraded_rate": 0.05,
                              "latency_ms": {"p50": 40.0, "p95": 90.0, "p99": 120.0}}},
        "bandit": {"environment": "synthetic", "config": {"slate_size": 5, "seeds": 2, "horizon": 50},
                   "policies": {"greedy": {**policy, "cum_reward": _band(50, 0.4), "cum_regret": _band(50, 0.2)},
                                "linucb": {**policy, "cum_reward": _band(50, 0.5), "cum_regret": _band(50, 0.1)}}},
        "off-policy": {"logging_policy": "epsilon_greedy", "decisions": 50,
                       "logging": {"estimates": estimates, "true_value": 0.22},
                       "greedy": {"estimates": estimates, "true_value": 0.5}},
    }


def test_report_is_tables_and_figures_not_json(tmp_path: Path) -> None:
    report = Path(write_report(str(tmp_path), synthetic_results(tmp_path)))
    text = report.read_text()
    assert "```" not in text  # no code blocks, JSON or otherwise
    for heading in ("## Data", "## Training", "## Offline evaluation", "## Serving",
                    "## Exploration experiment", "## Off-policy estimates"):
        section = text.split(heading)[1].split("\n## ")[0]
        assert "|---" in section, f"{heading} has no table"
    assert "| rejected: bad_timestamp | 40 | 4.0% |" in text
    assert "[0.0" in text.split("## Offline evaluation")[1]  # per-model CIs from the per-user results
    assert "| greedy | ips | 0.2000 | [0.1000, 0.3000] | 0.5000 | no |" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == ["report/quality.png", "report/regret.png", "report/tradeoff.png",
                             "report/training.png"]
    for link in links:  # relative to report.md, and real PNGs
        assert (tmp_path / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    machine = json.loads((tmp_path / "report.json").read_text())
    assert machine["evaluate"]["models"]["retriever"]["ndcg@10"] == pytest.approx(0.11)


def test_failed_and_missing_stages_are_said_not_hidden(tmp_path: Path) -> None:
    results = synthetic_results(tmp_path)
    results["stages"][3]["error"] = "RuntimeError: endpoint did not start"
    results.update({"serve": None, "off-policy": None, "bandit": None})
    results["train"]["history"] = []
    text = Path(write_report(str(tmp_path), results)).read_text()
    assert "Not available: the serve stage failed (RuntimeError: endpoint did not start)." in text
    assert "## Exploration experiment" not in text  # did not run: nothing to say
    assert "report/training.png" not in text and "report/quality.png" in text


def test_generation_samples_show_the_generated_list_and_explanations(tmp_path: Path) -> None:
    """#25: the serving section shows what the language model generated for a free-text
    request (each title's source) and a known user's explanations (each with its status), with
    the round trips the client measured."""
    text = Path(write_report(str(tmp_path), synthetic_results(tmp_path))).read_text()
    serving = text.split("## Serving")[1].split("\n## ")[0]
    assert "- **known_user** (41 ms): Toy Story (0.900)" in serving
    assert "- **feedback** (9 ms): ok" in serving
    assert 'Generated for a free-text request "space \\| kids"' in serving  # a | cannot break the table
    assert "Round trip 3,712 ms (in the endpoint: generation and retrieval 3,600 ms, ranking 80 ms)" in serving
    assert "| 1 | Moon \\| Kids (1990) | language model | -2.500 | 0.800 |" in serving
    assert "| 2 | Star Trip (2001) | language model | -3.500 | 0.700 |" in serving
    assert "Explanations for user 7's top items" in serving
    assert ("Round trip 2,480 ms (in the endpoint: explanations 2,400 ms); 1 explained, 1 ungrounded, "
            "1 over_budget") in serving
    assert "| 1 | Alien (1979) | explained | You might like Alien because you watched Aliens. |" in serving
    assert "| 2 | Heat (1995) | ungrounded | withheld: it named a fact" in serving
    assert "| 3 | Up (2009) | over_budget | none: only the top 2 are explained" in serving
    assert "NOT GENERATED" not in serving and "NO EXPLANATION" not in serving


def test_generation_samples_that_failed_or_were_skipped_are_said(tmp_path: Path) -> None:
    results = synthetic_results(tmp_path)
    samples = results["serve"]["samples"]
    generated, explained = samples[GENERATED_SAMPLE], samples[EXPLAINED_SAMPLE]
    # generation timed out: the index answered, visibly
    generated.update(retrieval_source="text", degraded=True,
                     degraded_reason="generation_unavailable: generation took longer than 15.0s")
    for it in explained["items"]:
        it.update(explanation_status="over_budget", explanation=None)
    text = Path(write_report(str(tmp_path), results)).read_text()
    assert ("NOT GENERATED: generation_unavailable: generation took longer than 15.0s; the `text` index "
            "answered instead.") in text
    assert "| 1 | Moon \\| Kids (1990) | index (text) | -2.500 | 0.800 |" in text
    assert "3 over_budget." in text and "NO EXPLANATION WAS SERVED" in text
    assert "| 1 | Alien (1979) | over_budget | none: out of time (serve.generation.explain_budget_ms) |" in text

    samples[GENERATED_SAMPLE] = {"request": generated["request"], "skipped": "serve.generation.enabled is false"}
    samples[EXPLAINED_SAMPLE] = {"request": explained["request"], "error": "POST /recommend -> 503: busy"}
    text = Path(write_report(str(tmp_path), results)).read_text()
    assert ('**Generated for a free-text request "space \\| kids"**: not sent (serve.generation.enabled is '
            "false).") in text
    assert "**Explanations for user 7's top items**: FAILED: POST /recommend -> 503: busy." in text
