"""Checkpoint discovery, serving export (adapter / merged) and the DeepSpeed config builder."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from rayrec.models.config import ModelConfig
from rayrec.models.ranker import build_ranker, load_ranker, save_ranker
from rayrec.models.tiny import make_tiny_backbone
from rayrec.train.checkpoint import (
    MANIFEST_FILE,
    export_serving_artifact,
    latest_checkpoint,
    write_manifest,
)
from rayrec.train.config import TrainConfig
from rayrec.train.deepspeed import build_ds_config

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
    from rayrec.train.checkpoint import best_checkpoint, record_best

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
