"""Experiment tracking in MLflow: runs read back with the MLflow client, off writes nothing,
a bad tracking URI warns once and the job still finishes."""

from __future__ import annotations

import logging
from pathlib import Path

from rayrec.config import load_config
from rayrec.explore.experiment import run_experiment
from rayrec.tracking import metric_key, store_uri

# the replay experiment in one process (no Ray): seconds, and a curve per round
BANDIT = {"data.synthetic.n_users": 60, "data.synthetic.n_items": 80, "explore.environment": "replay",
          "explore.policies": ["uniform", "thompson_beta"], "explore.seeds": 2, "explore.horizon": 30,
          "explore.replay_candidates": 5, "explore.parallel": False}


def _runs(cfg):
    from mlflow import MlflowClient

    client = MlflowClient(store_uri(cfg)[0])
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return client, client.search_runs([exp.experiment_id])


def test_bandit_experiment_is_tracked(tmp_path):
    cfg = load_config(None, {"run_dir": str(tmp_path), **BANDIT})
    run_experiment(cfg)
    run_experiment(cfg)  # a second run of the same config: same experiment, same metric names
    client, runs = _runs(cfg)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    run = runs[0]
    assert run.data.params["explore.horizon"] == "30" and run.data.params["environment"] == "replay"
    assert run.data.tags["rayrec.job"] == "bandit"
    history = client.get_metric_history(run.info.run_id, "cum_reward/thompson_beta")
    assert [m.step for m in history] == list(range(1, 31))
    assert history[-1].value >= history[0].value  # cumulative
    assert set(runs[0].data.metrics) == set(runs[1].data.metrics)
    assert "ctr/uniform" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/results.json", "report/curves.png", "report/report.md"} <= artifacts
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()


def test_tracking_off_writes_nothing(tmp_path):
    cfg = load_config(None, {"run_dir": str(tmp_path), **BANDIT, "tracking.enabled": False})
    run_experiment(cfg)
    assert (tmp_path / "explore" / "report.md").is_file()
    assert not (tmp_path / "mlruns").exists()


def test_unreachable_tracking_server_warns_once_and_the_job_finishes(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = load_config(None, {"run_dir": str(tmp_path), **BANDIT, "tracking.tracking_uri": "http://127.0.0.1:9"})
    with caplog.at_level(logging.WARNING, logger="rayrec.tracking"):
        result = run_experiment(cfg)
    assert Path(result["files"]["report"]).is_file()
    warnings = [r for r in caplog.records if r.name == "rayrec.tracking"]
    assert len(warnings) == 1 and "127.0.0.1:9" in warnings[0].getMessage()


def test_log_report_opens_a_run_when_none_is_active(tmp_path):
    from rayrec.tracking import log_report

    cfg = load_config(None, {"run_dir": str(tmp_path)})
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("# main\n")
    log_report(cfg, tmp_path / "report", name="main")
    client, (run,) = _runs(cfg)
    assert run.info.run_name == "main" and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "report")] == ["report/report.md"]


def test_metric_names_are_mlflow_legal():
    assert metric_key("valid_ndcg@10") == "valid_ndcg_at_10"
    assert metric_key("cum_reward/thompson_beta") == "cum_reward/thompson_beta"
