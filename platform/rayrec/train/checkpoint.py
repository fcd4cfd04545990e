"""Training checkpoints: layout, writing under ZeRO, finding the latest, exporting for serving.

A checkpoint directory (one per report, ``step_XXXXXXXX``) holds:
  model/    the servable ranker (``save_ranker``: ranker.json, adapter/, head, tokenizer/)
  ds/       DeepSpeed resume state (trainable params, optimizer, scheduler, step, client state)
  rayrec_config.yaml   the full run config
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from rayrec.models.ranker import ARTIFACT_FILE, load_ranker, save_ranker

STEP_DIR = "step_{:08d}"
_STEP_RE = re.compile(r"^step_(\d{8})$")
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


def restore_checkpoint(ckpt_dir: str, engine) -> dict:
    """Load DeepSpeed state (params, optimizer, scheduler, step) and return the client state."""
    _, client = engine.load_checkpoint(
        str(Path(ckpt_dir) / DS_DIR), tag=DS_TAG, load_module_strict=False,
        load_optimizer_states=True, load_lr_scheduler_states=True,
    )
    if client is None:
        raise RuntimeError(f"could not load DeepSpeed state from {ckpt_dir}/{DS_DIR}")
    return client


def _fs_and_path(uri: str):
    import pyarrow.fs as pafs

    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The most recently written complete checkpoint under ``checkpoint_dir`` (local or s3://),
    looking in ``<dir>/step_*`` and ``<dir>/<run_name>/step_*``; None when there is none."""
    import pyarrow.fs as pafs

    fs, root = _fs_and_path(checkpoint_dir)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return None
    best: tuple[float, int, str] | None = None
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=False)):
        dirs = [info]
        if info.type == pafs.FileType.Directory and not _STEP_RE.match(info.base_name):
            dirs = fs.get_file_info(pafs.FileSelector(info.path, recursive=False))
        for d in dirs:
            m = _STEP_RE.match(d.base_name)
            if d.type != pafs.FileType.Directory or not m:
                continue
            marker = fs.get_file_info(f"{d.path}/{MODEL_DIR}/{ARTIFACT_FILE}")
            if marker.type != pafs.FileType.File:
                continue  # incomplete (still uploading or interrupted)
            key = (marker.mtime.timestamp() if marker.mtime else 0.0, int(m.group(1)), d.path)
            best = key if best is None or key > best else best
    if best is None:
        return None
    scheme = checkpoint_dir.split("://", 1)[0] + "://" if "://" in checkpoint_dir else ""
    return scheme + best[2]


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
