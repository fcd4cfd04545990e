"""The main job end to end on a small synthetic world with a tiny model, on the session cluster."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
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
        "retriever.max_epochs": 10, "retriever.dim": 16, "retriever.max_len": 20,
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
    assert {"preprocess", "index", "train-retriever", "train", "evaluate", "bandit"} <= reused

    # The feedback loop: event log -> examples -> fine-tune from the current adapter -> compare
    # -> promote -> switch the running endpoint, while requests keep flowing.
    from rayrec.data.store import load_users
    from rayrec.feedback import feedback_examples, run_feedback_loop
    from rayrec.serving.control import start_app, stop_app

    examples = feedback_examples(cfg)
    assert len(examples) > 0
    assert all(labels[0] == 1.0 and sum(labels) == 1.0 for labels in examples["labels"])
    fb_cfg = cfg.model_copy(update={"feedback": cfg.feedback.model_copy(
        update={"max_steps": 2, "min_improvement": -1.0})})  # promote whatever the comparison says
    url = start_app(fb_cfg)
    user = str(load_users(cfg.data_dir)["user_id"].iloc[0])
    stop, responses = threading.Event(), []

    def traffic() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while not stop.is_set():
                r = http.post("/recommend", json={"user_id": user, "k": 3})
                responses.append((r.status_code, r.json().get("model_version")))

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        fb = run_feedback_loop(fb_cfg)
        time.sleep(2.0)  # a few requests after the switch
    finally:
        stop.set()
        sender.join()
        health = httpx.get(f"{url}/healthz", timeout=60).json()
        stop_app(fb_cfg)
    assert fb["examples"] == len(examples) and Path(fb["candidate"]).exists()
    assert set(fb["valid_ndcg@10"]) == {"current", "candidate"}
    assert fb["promoted"], fb
    assert (tmp_path / "run" / "feedback" / "promoted_checkpoint").read_text() == fb["candidate"]
    assert fb["endpoint"]["switched"], fb["endpoint"]
    assert health["ranker"]["version"] == fb["candidate"]
    assert responses and {code for code, _ in responses} == {200}, responses  # none dropped
    assert responses[-1][1] == fb["candidate"]
