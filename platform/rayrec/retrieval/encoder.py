"""Sentence embeddings for items and free-text queries: mean-pooled, L2-normalised."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from rayrec.models.backbone import resolve_backbone


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Unit-norm mean of the real tokens' hidden states: (B, T, d) -> (B, d) float32. The one
    sentence vector of the text index and of the item tower (rayrec.itemtower)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


class TextEncoder:
    """A transformers encoder turned into a sentence embedder (mean pooling over real tokens)."""

    def __init__(
        self, backbone: str = "minilm", max_length: int = 128, batch_size: int = 64, device: str = "cpu"
    ) -> None:
        path = resolve_backbone(backbone)
        self.name = backbone
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts into a (len(texts), dim) float32 array with unit-norm rows."""
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            enc = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state
            out[start : start + len(chunk)] = mean_pool(hidden, enc["attention_mask"]).cpu().numpy()
        return out
