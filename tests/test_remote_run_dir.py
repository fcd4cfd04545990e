"""`rayrec main` and the feedback loop with the run directory on S3 (a local moto server).

Every artifact (data, index, retriever, checkpoints, evaluation, event log, bandit results,
report, stage stamps) must land in the bucket, and nothing under a local ``s3:`` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rayrec import storage
from rayrec.config import load_config
from rayrec.models.tiny import make_tiny_backbone

pytest.importorskip("moto")
from s3_support import connect_with_env, list_keys, moto_server  # noqa: E402

pytestmark = pytest.mark.slow
BUCKET = "rayrec-remote"


@pytest.fixture(scope="module")
def remote_run(ray_cluster, tmp_path_factory):
    """The main job on ``s3://rayrec-remote/run``, run from an empty working directory."""
    from rayrec.recipes.main import run_main

    tmp = tmp_path_factory.mktemp("remote")
    backbone = make_tiny_backbone("bert", tmp / "tiny-bert")
    with moto_server(BUCKET) as env, pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.chdir(tmp)
        with connect_with_env(ray_cluster.address, env):
            cfg = load_config(overrides={
                "run_dir": f"s3://{BUCKET}/run",
                "data.synthetic.n_users": 60, "data.synthetic.n_items": 40, "data.synthetic.n_events": 2000,
                "model.backbone": backbone,
                "retriever.max_epochs": 4, "retriever.eval_every_epochs": 2, "retriever.dim": 16,
                "retriever.max_len": 20,
                "train.max_steps": 2, "train.batch_size": 4, "train.eval_every_steps": 2,
                "train.checkpoint_every_steps": 2, "train.max_valid_examples": 8,
                "evaluate.max_users": 8, "evaluate.bootstrap": 20,
                "explore.seeds": 2, "explore.horizon": 50,
                "serve.simulate_requests": 6, "serve.app_name": "rayrec_s3_test",
                # the test cluster's nodes started without these: its replicas get them from the
                # app config (shown on the dashboard; never by default)
                "serve.app_config_secrets": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
                "feedback.max_steps": 2, "feedback.min_improvement": -1.0, "feedback.switch_endpoint": False,
            })
            yield cfg, run_main(cfg), env, tmp


def test_main_job_writes_everything_to_the_bucket(remote_run) -> None:
    cfg, summary, env, workdir = remote_run
    failed = [s for s in summary["stages"] if s["error"]]
    assert not failed, failed
    assert summary["report"] == f"s3://{BUCKET}/run/report.md"
    keys = set(list_keys(env, BUCKET, "run/"))
    for expected in ("run/config.yaml", "run/data/manifest.json", "run/data/world/world.npz",
                     "run/index/index.faiss", "run/retriever/model/retriever.pt",
                     "run/retriever/index/meta.json", "run/checkpoints/best_checkpoint.json",
                     "run/checkpoints/ranker/history.json", "run/eval/eval.json", "run/eval/per_user.parquet",
                     "run/serve/counterfactual.json", "run/explore/results.json", "run/explore/curves.png",
                     "run/stages/train.json", "run/report.md", "run/report.json", "run/report/quality.png"):
        assert expected in keys, expected
    assert any(k.startswith("run/events/impressions/part-") for k in keys)
    assert any(k.startswith("run/checkpoints/ranker/step_") for k in keys)
    assert not (Path(workdir) / "s3:").exists()  # no URI mistaken for a local path
    report = storage.read_text(summary["report"])
    assert "```" not in report and "## Off-policy estimates" in report


def test_feedback_loop_on_the_bucket(remote_run) -> None:
    from rayrec.recipes.feedback import run_feedback_loop

    cfg = remote_run[0]
    fb = run_feedback_loop(cfg)  # the fixture's server, env and Ray connection are still up
    promoted = json.loads(storage.read_text(cfg.path("feedback", "promoted.json")))["checkpoint"]
    assert fb["promoted"], fb
    assert fb["candidate"].startswith(f"s3://{BUCKET}/run/feedback/") and promoted == fb["candidate"]
    assert fb["round_dir"].startswith(f"s3://{BUCKET}/run/feedback/")
