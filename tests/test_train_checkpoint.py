"""Checkpoint discovery, the one resolver of what a run serves (promoted, best, latest), serving export (adapter / merged) and the DeepSpeed config builder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rayrec.checkpoints import MANIFEST_FILE, latest_checkpoint
from rayrec.models.config import ModelConfig
from rayrec.models.ranker import build_ranker, load_ranker, save_ranker
from rayrec.models.tiny import make_tiny_backbone
from rayrec.raytrain.checkpoint import write_manifest
from rayrec.raytrain.deepspeed import build_ds_config
from rayrec.train.checkpoint import export_serving_artifact
from rayrec.train.config import TrainConfig

HIST = ["red car | red boat", "blue cup"]
CANDS = [["red apple", "blue car", "green cup"], ["blue tree", "white lamp"]]


@pytest.fixture(scope="module")
def trained_ranker(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    cfg = ModelConfig(backbone=make_tiny_backbone("bert", root / "bert"), max_length=32)
    model, collator = build_ranker(cfg)
    torch.manual_seed(1)
    with torch.no_grad():  # stand-in for training: non-zero LoRA B and head
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
    return root, cfg, model.eval(), collator


def test_latest_checkpoint_picks_newest_complete(trained_ranker, tmp_path):
    _, cfg, model, collator = trained_ranker
    assert latest_checkpoint(str(tmp_path / "missing")) is None
    for run, step in (("a", 10), ("a", 20), ("b", 5)):
        save_ranker(tmp_path / run / f"step_{step:08d}" / "model", cfg, model, collator)
        write_manifest(str(tmp_path / run / f"step_{step:08d}"))
        time.sleep(0.02)
    # Incomplete ones, newer: no manifest yet (its ranker.json already there); a manifest
    # whose files are not all there; a torn manifest.
    for step, damage in ((9, "no-manifest"), (8, "missing-file"), (7, "torn")):
        d = tmp_path / "b" / f"step_{step:08d}"
        save_ranker(d / "model", cfg, model, collator)
        if damage != "no-manifest":
            write_manifest(str(d))
        if damage == "missing-file":
            next(p for p in (d / "model").rglob("*") if p.is_file() and p.name != "ranker.json").unlink()
        if damage == "torn":
            (d / MANIFEST_FILE).write_text('{"files": {"model/ran')
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "b" / "step_00000005")
    assert latest_checkpoint(str(tmp_path / "a")) == str(tmp_path / "a" / "step_00000020")
    os.utime(tmp_path / "a" / "step_00000010" / MANIFEST_FILE)
    assert latest_checkpoint(str(tmp_path / "a")).endswith("step_00000010")


@pytest.mark.parametrize("merge", [False, True])
def test_export_serving_artifact_scores_like_the_checkpoint(trained_ranker, tmp_path, merge):
    root, cfg, model, collator = trained_ranker
    ckpt = tmp_path / "step_00000001"
    save_ranker(ckpt / "model", cfg, model, collator)
    reference = load_ranker(cfg, str(ckpt)).score(HIST, CANDS)
    out = export_serving_artifact(str(ckpt), str(tmp_path / f"export_{merge}"), merge=merge)
    assert os.path.isdir(os.path.join(out, "backbone" if merge else "adapter"))
    exported = load_ranker(cfg, out).score(HIST, CANDS)
    for a, b in zip(exported, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    untuned = load_ranker(cfg, None).score(HIST, CANDS)
    assert not np.allclose(untuned[0], reference[0], atol=1e-3)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ranker.json"):
        load_ranker(ModelConfig(), str(tmp_path))


def test_ds_config_from_train_config():
    tc = TrainConfig(batch_size=4, grad_accum_steps=2, deepspeed={"zero_stage": 3,
                     "offload_optimizer": True, "offload_params": True})
    ds = build_ds_config(tc, total_steps=100, world_size=2)
    assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["bf16"]["enabled"] is False  # CPU: fp32
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 5
    assert build_ds_config(TrainConfig(use_gpu=True), 10, 1)["bf16"]["enabled"] is True
    with pytest.raises(ValueError, match="zero_stage 3"):
        build_ds_config(TrainConfig(deepspeed={"zero_stage": 2, "offload_params": True}), 10, 1)


def test_best_checkpoint_prefers_the_recorded_best_over_the_latest(trained_ranker, tmp_path):
    """run_training records the best by validation; evaluation, serving, export and the
    feedback loop take it; a stale pointer (its checkpoint deleted) falls back to the latest."""
    from rayrec.checkpoints import best_checkpoint, record_best

    _, cfg, model, collator = trained_ranker
    assert best_checkpoint(str(tmp_path))[0] is None
    for step in (10, 20):
        save_ranker(tmp_path / "run" / f"step_{step:08d}" / "model", cfg, model, collator)
        write_manifest(str(tmp_path / "run" / f"step_{step:08d}"))
        time.sleep(0.02)
    assert best_checkpoint(str(tmp_path)) == (str(tmp_path / "run" / "step_00000020"), f"latest under {tmp_path}")
    record_best(str(tmp_path), str(tmp_path / "run" / "step_00000010"), "valid_ndcg@10", 0.5)
    path, how = best_checkpoint(str(tmp_path))
    assert path == str(tmp_path / "run" / "step_00000010") and "best by valid_ndcg@10 (0.5000)" in how
    (tmp_path / "run" / "step_00000010" / MANIFEST_FILE).unlink()
    assert best_checkpoint(str(tmp_path))[0] == str(tmp_path / "run" / "step_00000020")


def test_one_resolver_serves_the_promotion_until_a_newer_training_run(trained_ranker, tmp_path):
    """Endpoint, evaluation, feedback and export ask rayrec.checkpoints.served_checkpoint: a
    restarted endpoint serves what the feedback loop promoted; a newer training run supersedes
    the promotion; a torn, foreign or incomplete pointer is skipped with the reason; a promotion
    over a checkpoint that is no longer served is refused."""
    import json

    from rayrec.checkpoints import promote, promoted_file, record_best, served_checkpoint
    from rayrec.config import RayrecConfig
    from rayrec.evaluation.scoring import resolve_checkpoint

    _, mcfg, model, collator = trained_ranker
    cfg = RayrecConfig.model_validate({"run_dir": str(tmp_path)})

    def step(name: str) -> str:
        d = os.path.join(cfg.checkpoint_dir, "run", name)
        save_ranker(os.path.join(d, "model"), mcfg, model, collator)
        write_manifest(d)
        return d

    assert served_checkpoint(cfg).path is None and "untuned backbone" in served_checkpoint(cfg).how
    best, tuned = step("step_00000010"), os.path.join(tmp_path, "feedback", "r1", "step_00000004")
    record_best(cfg.checkpoint_dir, best, "valid_ndcg@10", 0.3)
    save_ranker(os.path.join(tuned, "model"), mcfg, model, collator)
    write_manifest(tuned)
    assert served_checkpoint(cfg).path == best
    assert served_checkpoint(cfg, "/explicit").how == "configured"

    assert promote(cfg, tuned, over=best, metrics={"current": 0.3, "candidate": 0.4}).path == tuned
    resolved = served_checkpoint(cfg)
    assert resolved.path == tuned and "promoted by the feedback loop" in resolved.how
    assert resolve_checkpoint(cfg) == tuned  # evaluation reads the same answer
    # a second round that compared against the old best loses: the run no longer serves it
    refused = promote(cfg, best, over=best, metrics={})
    assert refused.path is None and "changed during the round" in refused.how
    assert served_checkpoint(cfg).path == tuned

    # the promoted checkpoint torn (manifest gone): the best, saying why
    os.rename(os.path.join(tuned, MANIFEST_FILE), os.path.join(tuned, "m"))
    resolved = served_checkpoint(cfg)
    assert resolved.path == best and "incomplete" in resolved.how
    os.rename(os.path.join(tuned, "m"), os.path.join(tuned, MANIFEST_FILE))
    # a pointer that is not a promotion record (or not JSON) is data, never trusted: skipped
    pointer = Path(promoted_file(cfg))
    record = pointer.read_text()
    for bad in ("not json", json.dumps({"checkpoint": tuned, "exec": "rm -rf /"}), "[1]"):
        pointer.write_text(bad)
        assert served_checkpoint(cfg).path == best, bad
    pointer.write_text(record)
    # a newer training run records a new best: it supersedes the promotion
    newer = step("step_00000020")
    record_best(cfg.checkpoint_dir, newer, "valid_ndcg@10", 0.5)
    resolved = served_checkpoint(cfg)
    assert resolved.path == newer and "superseded by a newer training run" in resolved.how
