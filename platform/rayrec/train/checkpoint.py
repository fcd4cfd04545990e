"""Training checkpoints: layout, writing under ZeRO, finding the latest, exporting for serving.

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
import re
import shutil
import tempfile
from pathlib import Path

import torch

from rayrec.models.ranker import ARTIFACT_FILE, load_ranker, save_ranker

STEP_DIR = "step_{:08d}"
_STEP_RE = re.compile(r"^step_(\d{8})$")
DS_DIR, DS_TAG, MODEL_DIR, CONFIG_FILE = "ds", "state", "model", "rayrec_config.yaml"
MANIFEST_FILE = "manifest.json"
BEST_FILE = "best_checkpoint.json"  # <checkpoint_dir>/: the run's best by validation (run_training)


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


def is_complete(fs, ckpt_path: str) -> bool:
    """Every file the manifest names is there with its size (local or remote ``fs``)."""
    import pyarrow.fs as pafs

    try:
        with fs.open_input_stream(f"{ckpt_path}/{MANIFEST_FILE}") as f:
            sizes = json.loads(f.read())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no manifest yet (in progress, interrupted) or a torn one
    infos = fs.get_file_info([f"{ckpt_path}/{rel}" for rel in sizes])
    return all(i.type == pafs.FileType.File and i.size == size
               for i, size in zip(infos, sizes.values(), strict=True))


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
    from rayrec.storage import resolve_fs

    return resolve_fs(uri)


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
            if not is_complete(fs, d.path):
                continue  # incomplete (still uploading or interrupted)
            marker = fs.get_file_info(f"{d.path}/{MANIFEST_FILE}")
            key = (marker.mtime.timestamp() if marker.mtime else 0.0, int(m.group(1)), d.path)
            best = key if best is None or key > best else best
    if best is None:
        return None
    scheme = checkpoint_dir.split("://", 1)[0] + "://" if "://" in checkpoint_dir else ""
    return scheme + best[2]


def record_best(checkpoint_dir: str, checkpoint: str, metric: str, value: float) -> None:
    """Point ``<checkpoint_dir>/best_checkpoint.json`` at the run's best checkpoint."""
    fs, root = _fs_and_path(checkpoint_dir)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{BEST_FILE}") as f:
        f.write(json.dumps({"checkpoint": checkpoint, "metric": metric, "value": value}).encode())


def best_checkpoint(checkpoint_dir: str) -> tuple[str | None, str]:
    """The checkpoint to evaluate and serve, and why: the run's best by validation when
    recorded and complete, else the latest complete one. Returns (None, reason) if none."""
    fs, root = _fs_and_path(checkpoint_dir)
    try:
        with fs.open_input_stream(f"{root}/{BEST_FILE}") as f:
            best = json.loads(f.read())
        path = best["checkpoint"]
        inner = _fs_and_path(path)[1]
        if is_complete(fs, inner):
            return path, f"best by {best['metric']} ({best['value']:.4f}) under {checkpoint_dir}"
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no run finished with validation, or the pointer is stale: the latest then
    latest = latest_checkpoint(checkpoint_dir)
    if latest is None:
        return None, f"no complete checkpoint under {checkpoint_dir}"
    return latest, f"latest under {checkpoint_dir}"


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
