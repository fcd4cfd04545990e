"""Checkpoint helpers every DeepSpeed trainer shares: directory names, the trainable weights
gathered under ZeRO, DeepSpeed resume state, the completeness manifest, publishing the best.

A resumable checkpoint directory (the ranker's) holds:
  model/    the servable model
  ds/       DeepSpeed resume state (trainable params, optimizer, scheduler, step, client state)
  rayrec_config.yaml   the full run config
  manifest.json        written last by rank 0: every file of model/ and the config with its
                       size; a checkpoint is complete only when all of them are there (an
                       upload copies files in any order, so no single file can mark the end)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow.fs as pafs
import torch

from rayrec.checkpoints import MANIFEST_FILE

DS_DIR, DS_TAG, MODEL_DIR, CONFIG_FILE = "ds", "state", "model", "rayrec_config.yaml"


def checkpoint_dir_name(step: int, unit: str = "step", digits: int = 8) -> str:
    """Directory name of the checkpoint taken after ``step`` (an optimizer step, an epoch)."""
    return f"{unit}_{step:0{digits}d}"


def gather_trainable(engine) -> dict[str, torch.Tensor]:
    """Full copies of the trainable parameters on every rank (collective under ZeRO-3)."""
    named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    if engine.zero_optimization_stage() == 3:
        import deepspeed  # heavy; only a worker under ZeRO-3 gets here

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().float().cpu().clone() for n, p in named}
    return {n: p.detach().float().cpu().clone() for n, p in named}


def save_ds_state(out_dir: str, engine, client_state: dict) -> None:
    """Every rank writes its DeepSpeed shard (trainable params, optimizer, scheduler) to ds/."""
    engine.save_checkpoint(
        str(Path(out_dir) / DS_DIR), tag=DS_TAG, client_state=client_state,
        exclude_frozen_parameters=True,
    )


def restore_checkpoint(ckpt_dir: str, engine) -> dict:
    """Load DeepSpeed state (params, optimizer, scheduler, step) and return the client state."""
    _, client = engine.load_checkpoint(
        str(Path(ckpt_dir) / DS_DIR), tag=DS_TAG, load_module_strict=False,
        load_optimizer_states=True, load_lr_scheduler_states=True,
    )
    if client is None:
        raise RuntimeError(f"could not load DeepSpeed state from {ckpt_dir}/{DS_DIR}")
    return client


def write_manifest(ckpt_dir: str, entries: Sequence[str] = (CONFIG_FILE, MODEL_DIR)) -> None:
    """List ``entries`` (files, and every file under directories) with their sizes in
    ``manifest.json``: written last, it marks the checkpoint complete."""
    root, files = Path(ckpt_dir), []
    for entry in map(root.joinpath, entries):
        files += [entry] if entry.is_file() else sorted(p for p in entry.rglob("*") if p.is_file())
    sizes = {str(p.relative_to(root)): p.stat().st_size for p in files}
    (root / MANIFEST_FILE).write_text(json.dumps({"files": sizes}, indent=1))


def publish_checkpoint(checkpoint, dest: str) -> str:
    """Copy a Ray Train checkpoint's files to ``dest`` (local path or URI), replacing it: a
    run's best becomes the servable artifact (the retriever's model, the generator's adapter)."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.to_directory(tmp)
        if "://" in dest:
            pafs.copy_files(tmp, dest)
        else:
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(tmp, dest)
    return dest
