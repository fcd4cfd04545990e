"""The main job end to end on a small synthetic world with a tiny model, on the session cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rayrec.config import load_config
from rayrec.models.tiny import make_tiny_backbone
from rayrec.pipeline import run_main

pytestmark = pytest.mark.slow


def test_main_job_end_to_end_and_reuse(ray_cluster, tmp_path: Path) -> None:
    backbone = make_tiny_backbone("bert", tmp_path / "tiny-bert")
    cfg = load_config(overrides={
        "run_dir": str(tmp_path / "run"),
        "data.synthetic.n_users": 80, "data.synthetic.n_items": 60, "data.synthetic.n_events": 3000,
        "model.backbone": backbone,
        "train.max_steps": 4, "train.batch_size": 4, "train.eval_every_steps": 4,
        "train.checkpoint_every_steps": 4, "train.max_valid_examples": 10,
        "evaluate.max_users": 10, "evaluate.num_candidates": 10, "evaluate.bootstrap": 50,
        "explore.seeds": 2, "explore.horizon": 100,
        "serve.simulate_requests": 6, "serve.app_name": "rayrec_main_test",
    })
    summary = run_main(cfg)
    failed = [s for s in summary["stages"] if s["error"]]
    assert not failed, failed
    run = tmp_path / "run"
    report = (run / "report.md").read_text()
    for section in ("## Data", "## Training", "## Offline evaluation", "## Serving",
                    "## Exploration experiment", "## Off-policy estimates"):
        assert section in report
    assert "](eval/eval.png)" in report  # stage images are linked from the run directory
    ope = json.loads(report.split("## Off-policy estimates from the endpoint's log")[1]
                     .split("```json")[1].split("```")[0])
    assert ope["decisions"] > 0 and "ips" in ope["greedy"]["estimates"]

    again = run_main(cfg)  # a second run reuses every built stage
    reused = {s["name"] for s in again["stages"] if s["reused"]}
    assert {"preprocess", "index", "train", "evaluate", "bandit"} <= reused

    # The feedback loop: event log -> examples -> fine-tune from the current adapter -> compare.
    from rayrec.feedback import feedback_examples, run_feedback_loop

    examples = feedback_examples(cfg)
    assert len(examples) > 0
    assert all(labels[0] == 1.0 and sum(labels) == 1.0 for labels in examples["labels"])
    fb = run_feedback_loop(cfg, steps=2)
    assert fb["examples"] == len(examples) and Path(fb["candidate"]).exists()
    assert set(fb["valid_ndcg@10"]) == {"current", "candidate"}
    if fb["promoted"]:
        assert (tmp_path / "run" / "feedback" / "promoted_checkpoint").read_text() == fb["candidate"]
