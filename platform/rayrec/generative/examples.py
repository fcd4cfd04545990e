"""Tuning examples for the generator: (prompt, target) texts, then token batches.

Built in the driver with pandas (``load_sequences`` already orders each user's items as every
evaluation reads them): for each user's train sequence, the newest ``positions_per_user``
transitions as (``history_items`` titles before item t -> title of item t), capped by a seeded
sample of ``max_examples``. Validation: a seeded sample of users, their newest train titles ->
their held-out validation item (never a training target), the full-catalog evaluation's task
one step earlier.

Prompt and target are tokenised separately and concatenated, exactly as decoding reads them
(:func:`rayrec.generative.decode.generate_items` tokenises the prompt, the trie each title plus
the end token), so the model learns the token paths it is later constrained to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rayrec.data.store import load_items
from rayrec.generative import prompts
from rayrec.generative.config import GeneratorConfig
from rayrec.seqrec.data import load_sequences

IGNORE = -100  # label of a position that is not scored (prompt, padding)


def next_item_pairs(sequences: Sequence[np.ndarray], history_items: int, positions: int
                    ) -> list[tuple[np.ndarray, int]]:
    """(the ``history_items`` items before t, item t) for the newest ``positions`` t of each
    sequence that have at least one item before them."""
    pairs = []
    for seq in sequences:
        for t in range(max(1, len(seq) - positions), len(seq)):
            pairs.append((seq[max(0, t - history_items) : t], int(seq[t])))
    return pairs


def build_examples(data_dir: str, gc: GeneratorConfig, tokenizer) -> tuple[list[dict], list[dict]]:
    """(train rows, validation rows), each ``{"prompt": str, "target": str}``."""
    titles = load_items(data_dir)["title"].astype(str).to_numpy()
    users = load_sequences(data_dir, "valid")  # history: train items in time order; target: valid item
    if users.empty:
        raise ValueError(f"no users with train and validation items under {data_dir}: run preprocessing")
    rng = np.random.default_rng(gc.seed)
    train = next_item_pairs(users["history"].tolist(), gc.history_items, gc.positions_per_user)
    if gc.max_examples is not None and len(train) > gc.max_examples:
        train = [train[i] for i in np.sort(rng.choice(len(train), gc.max_examples, replace=False))]
    valid_users = users.iloc[np.sort(rng.choice(len(users), min(gc.max_valid_users, len(users)), replace=False))]
    valid = [(h[-gc.history_items :], int(y)) for h, y in zip(valid_users["history"], valid_users["target"], strict=True)]

    def row(history: np.ndarray, item: int) -> dict:
        return {"prompt": prompts.render(tokenizer, titles[history].tolist()),
                "target": prompts.target(tokenizer, titles[item])}

    return [row(h, y) for h, y in train], [row(h, y) for h, y in valid]


def tokenize(tokenizer, rows: Sequence[dict]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids) per row, without special tokens (as decoding reads them)."""
    def ids(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    return list(zip(ids([r["prompt"] for r in rows]), ids([r["target"] for r in rows]), strict=True))


@dataclass
class TargetBatch:
    """Left-padded sequences, so every target ends at the last position: the model needs
    logits for the last ``labels.shape[1] + 1`` positions only (the LM head over a 49k-token
    vocabulary at every prompt position would be a fifth of a SmolLM2 step's compute)."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L): 0 at each row's first real token, as when decoding
    labels: torch.Tensor  # (B, T): the last T tokens of each row, IGNORE outside its target

    def to(self, device) -> TargetBatch:
        return TargetBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask,
                                                     self.position_ids, self.labels)))


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> TargetBatch:
    """One batch of (prompt ids, target ids); only target tokens get labels."""
    length = max(len(p) + len(t) for p, t in encoded)
    width = max(len(t) for _, t in encoded)
    ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    for r, (p, t) in enumerate(encoded):
        seq = p + t
        ids[r, length - len(seq) :] = torch.tensor(seq)
        mask[r, length - len(seq) :] = 1
        labels[r, width - len(t) :] = torch.tensor(t)
    return TargetBatch(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), labels)


def target_logits(model, batch: TargetBatch) -> torch.Tensor:
    """(B, T, vocab) logits scoring each of the last T tokens (teacher forcing): logits at
    position j score the token at j + 1, so the last T + 1 positions cover every target token."""
    width = batch.labels.shape[1]
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                 position_ids=batch.position_ids, logits_to_keep=width + 1).logits[:, :-1].float()


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed negative log-likelihood of its target tokens, and their count."""
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                            reduction="none")  # (B, T), 0 where ignored
    return nll.sum(-1), (labels != IGNORE).sum(-1)


def target_exact(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: whether every target token is the argmax given the ones before it (the model
    would write the whole title greedily, even unconstrained)."""
    return ((logits.argmax(-1) == labels) | (labels == IGNORE)).all(-1)
