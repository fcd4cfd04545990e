"""The ranker's checkpoints: written under ZeRO (servable model, DeepSpeed state, config,
manifest; the layout is :mod:`rayrec.raytrain.checkpoint`'s) and exported for serving.

Which checkpoint a run serves (best, promoted, latest, complete or not) is rayrec.checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rayrec.models.config import ModelConfig
from rayrec.models.ranker import ARTIFACT_FILE, load_ranker, save_ranker
from rayrec.raytrain.checkpoint import (
    CONFIG_FILE,
    MODEL_DIR,
    gather_trainable,
    save_ds_state,
    write_manifest,
)


def write_checkpoint(out_dir: str, engine, collator, cfg, client_state: dict, rank: int) -> None:
    """Every rank writes its DeepSpeed shard; rank 0 adds the servable model and config."""
    save_ds_state(out_dir, engine, client_state)
    state = gather_trainable(engine)
    if rank == 0:
        save_ranker(Path(out_dir) / MODEL_DIR, cfg.model, engine.module, collator, state)
        (Path(out_dir) / CONFIG_FILE).write_text(cfg.to_yaml())
        write_manifest(out_dir)


def export_serving_artifact(checkpoint: str, out_dir: str, merge: bool = False) -> str:
    """Copy the servable ranker out of a checkpoint: the LoRA adapter as is, or merged into the
    base weights (``merge=True``: one plain transformers model, no peft needed at load)."""
    src = Path(checkpoint) / MODEL_DIR if (Path(checkpoint) / MODEL_DIR).is_dir() else Path(checkpoint)
    if not (src / ARTIFACT_FILE).is_file():
        raise FileNotFoundError(f"{checkpoint} holds no ranker ({ARTIFACT_FILE})")
    out = Path(out_dir)
    if not merge:
        shutil.copytree(src, out, dirs_exist_ok=True)
        return str(out)
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
