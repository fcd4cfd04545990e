"""Training checkpoints: layout, writing under ZeRO, resuming, publishing, exporting for serving.

Which checkpoint a run serves (best, promoted, latest, complete or not) is rayrec.checkpoints.

A checkpoint directory (one per report, ``step_XXXXXXXX``) holds:
  model/    the servable ranker (``save_ranker``: ranker.json, adapter/, head, tokenizer/)
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
from pathlib import Path

import torch

from rayrec.checkpoints import MANIFEST_FILE
from rayrec.models.ranker import ARTIFACT_FILE, load_ranker, save_ranker

STEP_DIR = "step_{:08d}"
DS_DIR, DS_TAG, MODEL_DIR, CONFIG_FILE = "ds", "state", "model", "rayrec_config.yaml"


def checkpoint_dir_name(step: int) -> str:
    """Directory name of the checkpoint taken after optimizer step ``step``."""
    return STEP_DIR.format(step)


def gather_trainable(engine) -> dict[str, torch.Tensor]:
    """Full copies of the trainable parameters on every rank (collective under ZeRO-3)."""
    named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().float().cpu().clone() for n, p in named}
    return {n: p.detach().float().cpu().clone() for n, p in named}


def write_checkpoint(out_dir: str, engine, collator, cfg, client_state: dict, rank: int) -> None:
    """Every rank writes its DeepSpeed shard; rank 0 adds the servable model and config."""
    engine.save_checkpoint(
        str(Path(out_dir) / DS_DIR), tag=DS_TAG, client_state=client_state,
        exclude_frozen_parameters=True,
    )
    state = gather_trainable(engine)
    if rank == 0:
        save_ranker(Path(out_dir) / MODEL_DIR, cfg.model, engine.module, collator, state)
        (Path(out_dir) / CONFIG_FILE).write_text(cfg.to_yaml())
        write_manifest(out_dir)


def write_manifest(ckpt_dir: str) -> None:
    """List model/ and the config with their sizes in ``manifest.json`` (written last)."""
    root = Path(ckpt_dir)
    files = [p for p in (root / CONFIG_FILE,) if p.is_file()]
    files += sorted(p for p in (root / MODEL_DIR).rglob("*") if p.is_file())
    sizes = {str(p.relative_to(root)): p.stat().st_size for p in files}
    (root / MANIFEST_FILE).write_text(json.dumps({"files": sizes}, indent=1))


def restore_checkpoint(ckpt_dir: str, engine) -> dict:
    """Load DeepSpeed state (params, optimizer, scheduler, step) and return the client state."""
    _, client = engine.load_checkpoint(
        str(Path(ckpt_dir) / DS_DIR), tag=DS_TAG, load_module_strict=False,
        load_optimizer_states=True, load_lr_scheduler_states=True,
    )
    if client is None:
        raise RuntimeError(f"could not load DeepSpeed state from {ckpt_dir}/{DS_DIR}")
    return client


def publish_checkpoint(checkpoint, dest: str) -> str:
    """Copy a Ray Train checkpoint's files to ``dest`` (local path or URI), replacing it: a
    run's best becomes the servable artifact (the retriever's model, the generator's adapter)."""
    import pyarrow.fs as pafs

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.to_directory(tmp)
        if "://" in dest:
            pafs.copy_files(tmp, dest)
        else:
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(tmp, dest)
    return dest


def export_serving_artifact(checkpoint: str, out_dir: str, merge: bool = False) -> str:
    """Copy the servable ranker out of a checkpoint: the LoRA adapter as is, or merged into the
    base weights (``merge=True``: one plain transformers model, no peft needed at load)."""
    from rayrec.models.config import ModelConfig

    src = Path(checkpoint) / MODEL_DIR if (Path(checkpoint) / MODEL_DIR).is_dir() else Path(checkpoint)
    if not (src / ARTIFACT_FILE).is_file():
        raise FileNotFoundError(f"{checkpoint} holds no ranker ({ARTIFACT_FILE})")
    out = Path(out_dir)
    if not merge:
        shutil.copytree(src, out, dirs_exist_ok=True)
        return str(out)
    import json

    meta = json.loads((src / ARTIFACT_FILE).read_text())
    cfg = ModelConfig.model_validate(meta["model_config"])
    ranker = load_ranker(cfg, str(src))
    model = ranker.model
    if hasattr(model.backbone, "merge_and_unload"):
        model.backbone = model.backbone.merge_and_unload()
    plain = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": False})})
    save_ranker(out, plain, model, ranker.collator, state={n: p.detach() for n, p in model.named_parameters()})
    meta = json.loads((out / ARTIFACT_FILE).read_text())
    meta["format"] = "merged"
    (out / ARTIFACT_FILE).write_text(json.dumps(meta, indent=2))
    return str(out)
