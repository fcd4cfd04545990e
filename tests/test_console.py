"""The quiet console: stage lines, progress with an ETA, what it lets through, worker lines,
key figures; and the early check of data paths inside a submitted job. No Ray needed."""

from __future__ import annotations

import io
import json
import logging

import pytest
from rayrec import console
from rayrec.config import load_config
from rayrec.console.handler import _Live
from rayrec.errors import ConfigError
from rayrec.figures import key_figures
from rayrec.runtime import JOB_CONFIG_ENV, check_job_paths


@pytest.fixture
def screen():
    """A ConsoleHandler on a non-terminal stream (as in a job's log), on the root logger, with
    Ray's loggers sent there as a quiet session does."""
    stream = io.StringIO()
    handler = console.ConsoleHandler(stream)
    root, ray_logger = logging.getLogger(), logging.getLogger("ray")
    saved = root.handlers, root.level, ray_logger.handlers, ray_logger.propagate
    root.handlers, root.level = [handler], logging.INFO
    ray_logger.handlers, ray_logger.propagate = [], True
    yield stream
    root.handlers, root.level, ray_logger.handlers, ray_logger.propagate = saved
    handler.close()


def test_progress_text_round_trips() -> None:
    p = console.parse_progress("epoch 5/60 (warm-up) loss=3.837 valid_ndcg@10=0.07211")
    assert (p.what, p.done, p.total, p.note) == ("epoch", 5, 60, "warm-up")
    assert p.figures == {"loss": "3.837", "valid_ndcg@10": "0.07211"}
    assert console.parse_progress("retriever epoch 2/3").what == "retriever epoch"
    assert console.parse_progress("no progress here") is None


def test_eta_from_the_rate_since_the_first_update() -> None:
    live = _Live("[3] train", started=0.0)
    live.update(console.Progress("step", 2, 12), now=10.0)
    assert live.eta(10.0) is None  # one point: no rate yet
    live.update(console.Progress("step", 4, 12), now=30.0)  # 10 s a step from here on
    assert live.eta(30.0) == pytest.approx(80.0)
    assert live.eta(50.0) == pytest.approx(60.0)  # counts down between updates
    assert "step 4/12 33%" in live.text(30.0, elapsed=False)


def test_console_shows_stages_progress_and_warnings_only(screen) -> None:
    console.stage_start("train", 4)
    logging.getLogger("rayrec.train").info("chatter for the log file")
    logging.getLogger("ray.data").info("Ray Data internals")
    logging.getLogger("ray.data").warning("a Ray warning (in the log file)")
    console.progress("step", 1, 3, loss=2.5)
    console.progress("step", 2, 3, loss=2.25)  # throttled off a terminal
    logging.getLogger("rayrec.runtime").warning("training waits for CPUs")
    logging.getLogger("ray").error("a worker died")
    console.progress("step", 3, 3, loss=2.0, valid_ndcg=0.5)
    console.stage_done({"metrics": {"step": 3, "loss": 2.0, "valid_ndcg@10": 0.5, "samples_per_s": 4.0}})
    lines = screen.getvalue().splitlines()
    assert lines[0] == "[4] train: running"
    assert lines[1].startswith("[4] train  step 1/3 33%  loss=2.5")
    assert lines[2:4] == ["warning: training waits for CPUs", "error (ray): a worker died"]
    assert lines[4].startswith("[4] train  step 3/3 100%  loss=2 valid_ndcg=0.5")
    assert lines[5].startswith("[4] train: done in ") and "valid_ndcg@10 0.5" in lines[5]
    assert len(lines) == 6


def test_a_failed_stage_is_one_line(screen) -> None:
    with pytest.raises(ValueError), console.stage("evaluate"):
        raise ValueError("no checkpoint")
    out = screen.getvalue().splitlines()
    assert out[-1].startswith("evaluate: FAILED after ") and out[-1].endswith("ValueError: no checkpoint")
    assert "Traceback" not in screen.getvalue()


def test_forwarded_worker_lines_keep_rayrec_only(screen, caplog) -> None:
    console.stage_start("train-retriever")
    with caplog.at_level(logging.INFO):
        console.forward_worker_lines({"pid": 7, "lines": [
            "[rayrec] INFO rayrec.progress: epoch 5/10 loss=3.8",
            "Reporting training result 1: TrainingReport(checkpoint=...)",
            "[2026-11-27 08:36:45,046 E 18045 18186] core_worker.cc:2465: Actor ... PreemptionWatcher",
            "[rayrec] WARNING rayrec.train: resumed late",
        ]})
        console.forward_worker_lines({"pid": "raylet", "lines": [
            "WARNING: 8 PYTHON worker processes have been started",
            "Task was killed due to the node running low on memory.",
        ]})
    shown = screen.getvalue()
    assert "epoch 5/10" in shown and "warning: resumed late" in shown
    assert "TrainingReport" not in shown and "core_worker" not in shown and "8 PYTHON" not in shown
    assert "running low on memory" in shown
    assert any(r.name == "ray.raylet" and "8 PYTHON" in r.message for r in caplog.records)  # log file


def test_key_figures() -> None:
    manifest = {"counts": {"users": 370, "items": 377, "rows_kept": 27882, "rows_read": 40000,
                           "rows_rejected": 29, "examples": {"train": 3562}}}
    assert key_figures("preprocess", manifest) == (
        "370 users, 377 items, 27,882 of 40,000 events kept (29 rejected), 3,562 training examples")
    evaluation = {"models": {"popularity": {"ndcg@10": 0.17}, "retriever": {"ndcg@10": 0.2}}}
    assert key_figures("evaluate", evaluation) == "NDCG@10 retriever 0.2, popularity 0.17"
    assert key_figures("train", {"unexpected": "shape", "n": 3}) == "unexpected shape, n 3"  # fallback
    assert key_figures("index", "/tmp/run/index") == "/tmp/run/index"
    assert key_figures("bandit", None) == ""


def _job_env(monkeypatch) -> None:
    monkeypatch.setenv(JOB_CONFIG_ENV, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_1.zip"}}))


def test_relative_data_path_fails_early_inside_a_job(monkeypatch, tmp_path, caplog) -> None:
    monkeypatch.chdir(tmp_path)  # the job's copy of --working-dir: no ../shared beside it
    cfg = load_config(overrides={"data.path": "../shared/data/ml-latest-small"})
    check_job_paths(cfg)  # not a job: the path is the user's business
    _job_env(monkeypatch)
    with pytest.raises(ConfigError, match="relative.*absolute path on shared storage.*s3://"):
        check_job_paths(cfg)
    assert "run_dir 'rayrec_output' is relative" in caplog.text  # results would vanish with the copy
    (tmp_path / "data").mkdir()
    for ok in ("data", str(tmp_path / "elsewhere"), "s3://bucket/ml", None):  # inside, absolute, URI
        check_job_paths(load_config(overrides={"data.path": ok}))


def test_cli_restores_logging_after_a_quiet_run(capsys) -> None:
    from rayrec.cli import main

    root = logging.getLogger()
    before = (list(root.handlers), root.level, list(logging.getLogger("ray").handlers))
    assert main(["preprocess", "--set", "train.lr=fast"]) == 2
    assert (list(root.handlers), root.level, list(logging.getLogger("ray").handlers)) == before
    assert capsys.readouterr().err.startswith("rayrec preprocess: error: ")
