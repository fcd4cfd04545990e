"""``ItemTower``: item text -> a vector in the retriever's item space.

    x_i = normalize(mean_pool(Encoder_LoRA(text_i)))      (the text index's MiniLM vector at step 0)
    t_i = W x_i                                          (W: the retriever's own text projection)

Started from the retriever's frozen text part (LoRA's B = 0, W copied from ``text_proj``), so
the untuned tower is exactly the "frozen" text-grounded retriever, and tuning can only move
from there. On disk (a tower directory): ``tower.safetensors`` (the trainable tensors: LoRA
and W) and ``tower.json`` (backbone, LoRA settings, dims). Nothing is unpickled on load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from rayrec import storage
from rayrec.itemtower.config import TowerConfig
from rayrec.models.backbone import backbone_family, default_lora_targets, resolve_backbone
from rayrec.retrieval.encoder import mean_pool

WEIGHTS_FILE, META_FILE = "tower.safetensors", "tower.json"


class ItemTower(nn.Module):
    """Encoder (LoRA-wrapped) + mean pooling + unit norm + a linear head, no bias."""

    def __init__(self, encoder: nn.Module, in_dim: int, out_dim: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(mean_pool(hidden, attention_mask))


def build_tower(tc: TowerConfig, out_dim: int, head: np.ndarray | None = None, seed: int = 0):
    """(ItemTower with a fresh LoRA adapter on ``tc.backbone``, its tokenizer).

    ``head``: (out_dim, in_dim) initial W (the retriever's ``text_proj.weight``); None: random.
    """
    path = resolve_backbone(tc.backbone)
    encoder = AutoModel.from_pretrained(path, dtype=torch.float32)
    in_dim = int(encoder.config.hidden_size)
    torch.manual_seed(seed)
    if tc.lora.enabled:
        family = backbone_family(path)
        encoder = get_peft_model(encoder, LoraConfig(
            r=tc.lora.r, lora_alpha=tc.lora.alpha, lora_dropout=tc.lora.dropout,
            target_modules=tc.lora.target_modules or default_lora_targets(family)))
    else:
        encoder.requires_grad_(False)
    tower = ItemTower(encoder, in_dim, out_dim)
    if head is not None:
        w = torch.as_tensor(np.asarray(head, np.float32))
        if tuple(w.shape) != (out_dim, in_dim):
            raise ValueError(f"tower head must be ({out_dim}, {in_dim}), got {tuple(w.shape)}")
        with torch.no_grad():
            tower.head.weight.copy_(w)
    return tower, AutoTokenizer.from_pretrained(path)


def trainable_state(tower: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().contiguous() for n, p in tower.named_parameters() if p.requires_grad}


def save_tower(out_dir: str | Path, state: dict[str, torch.Tensor], tc: TowerConfig, out_dim: int,
               meta: dict | None = None) -> str:
    """Write the trainable tensors (safetensors) and what rebuilds the tower (JSON)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / WEIGHTS_FILE))
    doc = {"tower": tc.model_dump(mode="json"), "out_dim": out_dim, **(meta or {})}
    (out / META_FILE).write_text(json.dumps(doc, indent=1, default=str))
    return str(out)


def load_tower(tower_dir: str) -> tuple[ItemTower, object, dict]:
    """(tower in eval mode with LoRA merged, tokenizer, meta) from a tower directory."""
    meta_uri, weights_uri = storage.join(tower_dir, META_FILE), storage.join(tower_dir, WEIGHTS_FILE)
    if not storage.is_file(meta_uri) or not storage.is_file(weights_uri):
        raise FileNotFoundError(f"no item tower at {tower_dir} (missing {META_FILE} or {WEIGHTS_FILE}); "
                                "run `rayrec train-tower` first")
    meta = json.loads(storage.read_text(meta_uri))
    tc = TowerConfig.model_validate(meta["tower"])
    tower, tokenizer = build_tower(tc, int(meta["out_dim"]))
    state = load(storage.read_bytes(weights_uri))
    expected = set(trainable_state(tower))
    if set(state) != expected:
        raise ValueError(f"{weights_uri}: tensors do not match the tower's trainable parameters "
                         f"(unexpected {sorted(set(state) - expected)[:3]}, missing {sorted(expected - set(state))[:3]})")
    tower.load_state_dict(state, strict=False)
    if tc.lora.enabled:
        tower.encoder = tower.encoder.merge_and_unload()  # plain Linear layers: inference speed
    return tower.eval(), tokenizer, meta


@torch.no_grad()
def encode(tower: ItemTower, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 128
           ) -> np.ndarray:
    """(len(texts), out_dim) float32 retriever-space vectors."""
    tower.eval()
    device = next(tower.parameters()).device
    out = np.zeros((len(texts), tower.head.out_features), dtype=np.float32)
    for s in range(0, len(texts), batch_size):
        enc = tokenizer([str(t) for t in texts[s : s + batch_size]], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt").to(device)
        out[s : s + batch_size] = tower(enc["input_ids"], enc["attention_mask"]).cpu().numpy()
    return out
