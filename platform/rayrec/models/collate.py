"""Tokenisation and collation: (history, candidates) lists -> model inputs, in one place.

Scoring is planned as a list of sequences: one per (example, candidate) for pointwise kinds,
one per window of candidates for ``causal_listwise``. Each sequence remembers which
example and candidate positions its outputs belong to, so training (a (B, C) score matrix)
and scoring (one array per example) read model outputs back the same way.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rayrec.models import prompts
from rayrec.models.config import ModelConfig


@dataclass(frozen=True)
class SeqPlan:
    """One model input sequence: example index, its history, and the candidates it scores."""

    example: int
    history: str
    positions: tuple[int, ...]  # candidate positions in the example's list, in prompt order
    texts: tuple[str, ...]
    priors: tuple | None = None  # the candidates' priors (a float or an F-tuple each), same order


class RankerCollator:
    """Turns texts into padded tensors for one ranker kind (the tokenizer's one user)."""

    def __init__(self, tokenizer, cfg: ModelConfig, causal: bool):
        self.tok, self.cfg, self.causal = tokenizer, cfg, causal
        if causal and cfg.kind == "cross_encoder":
            raise ValueError("kind 'cross_encoder' needs an encoder backbone (BERT family)")
        if not causal and cfg.kind != "cross_encoder":
            raise ValueError(f"kind {cfg.kind!r} needs a causal LM backbone (GPT-2/Llama/Qwen)")
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError("tokenizer has neither a pad nor an eos token")
        if causal:
            self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
            words = [prompts.YES, prompts.NO] if cfg.kind == "causal_yesno" else (
                prompts.index_label_tokens(cfg.listwise_window)
            )
            self.answer_ids = [self._first_token(w) for w in words]
            if len(set(self.answer_ids)) != len(self.answer_ids):
                raise ValueError(f"answer words {words} do not map to distinct first tokens")
        else:
            tokenizer.truncation_side = "left"  # cut the oldest history first

    def _first_token(self, word: str) -> int:
        # Multi-token verbalizers are scored by their first token (distinctness checked above).
        ids = self.tok(word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"tokenizer maps {word!r} to no tokens")
        return ids[0]

    def plan(
        self,
        history_texts: Sequence[str],
        candidate_texts: Sequence[Sequence[str]],
        rng: random.Random | None = None,
        candidate_priors: Sequence[Sequence[float]] | None = None,
    ) -> list[SeqPlan]:
        """Sequences to run; ``rng`` shuffles listwise candidate order (training).

        ``candidate_priors`` (one value per candidate, see :mod:`rayrec.models.prior`) travel
        with their candidates into :meth:`encode`.
        """
        if len(history_texts) != len(candidate_texts):
            raise ValueError(
                f"{len(history_texts)} histories but {len(candidate_texts)} candidate lists"
            )
        if candidate_priors is not None and (
            len(candidate_priors) != len(candidate_texts)
            or any(len(p) != len(c) for p, c in zip(candidate_priors, candidate_texts, strict=True))
        ):
            raise ValueError("candidate_priors must hold one value per candidate (a float or an F-vector)")
        seqs = []
        for ex, (hist, cands) in enumerate(zip(history_texts, candidate_texts, strict=True)):
            priors = None if candidate_priors is None else [
                tuple(map(float, v)) if np.ndim(v) else float(v) for v in candidate_priors[ex]]
            if self.cfg.kind != "causal_listwise":
                seqs += [SeqPlan(ex, hist, (j,), (c,), None if priors is None else (priors[j],))
                         for j, c in enumerate(cands)]
                continue
            order = list(range(len(cands)))
            if rng is not None:
                rng.shuffle(order)
            w = self.cfg.listwise_window
            for s in range(0, len(order), w):
                pos = tuple(order[s : s + w])
                seqs.append(SeqPlan(ex, hist, pos, tuple(cands[p] for p in pos),
                                    None if priors is None else tuple(priors[p] for p in pos)))
        return seqs

    def _priors(self, seqs: Sequence[SeqPlan]) -> dict[str, torch.Tensor]:
        """``{"prior": (S, W, F)}`` aligned with the model's outputs (zero-padded), or {}."""
        given = [s.priors for s in seqs if s.priors is not None]
        if not given:
            return {}
        n_feat = int(np.asarray(given[0][0]).size)
        width = self.cfg.listwise_window if self.cfg.kind == "causal_listwise" else 1
        prior = torch.zeros((len(seqs), width, n_feat), dtype=torch.float32)
        for i, s in enumerate(seqs):
            if s.priors is not None:
                vals = torch.tensor(s.priors, dtype=torch.float32).reshape(len(s.priors), n_feat)
                prior[i, : len(s.priors)] = vals
        return {"prior": prior}

    def _cand_ids(self, texts: Sequence[str]) -> list[list[int]]:
        ids = self.tok(list(texts), add_special_tokens=False)["input_ids"]
        return [x[: self.cfg.max_candidate_tokens] for x in ids]

    def encode(self, seqs: Sequence[SeqPlan]) -> dict[str, torch.Tensor]:
        """Padded model inputs for ``seqs`` (right padding for encoders, left for causal LMs)."""
        if not self.causal:
            cand_ids = self._cand_ids([s.texts[0] for s in seqs])
            cands = self.tok.batch_decode(cand_ids)
            enc = self.tok(
                cands, [s.history for s in seqs], truncation="only_second",
                max_length=self.cfg.max_length, padding=True, return_tensors="pt",
            )
            return dict(enc) | self._priors(seqs)
        hist_cache: dict[str, list[int]] = {}
        for s in seqs:
            if s.history not in hist_cache:
                hist_cache[s.history] = self.tok(s.history, add_special_tokens=False)["input_ids"]
        rows = []
        for s in seqs:
            if self.cfg.kind == "causal_yesno":
                prefix, suffix = prompts.yesno_pieces(self.tok.decode(self._cand_ids(s.texts)[0]))
                head = self.bos + self._ids(prefix)
                tail = self._ids(suffix)
            else:
                prefix, lines, suffix = prompts.listwise_pieces(
                    [self.tok.decode(x) for x in self._cand_ids(s.texts)]
                )
                head = self.bos + self._ids(prefix)
                tail = self._ids("".join(lines) + suffix)
            budget = max(0, self.cfg.max_length - len(head) - len(tail))
            hist = hist_cache[s.history][-budget:] if budget else []
            rows.append(head + hist + tail)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        return {"input_ids": ids, "attention_mask": mask} | self._priors(seqs)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]


def scatter_scores(
    out: torch.Tensor, seqs: Sequence[SeqPlan], n_examples: int, n_cols: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place per-sequence outputs (S, W) into a (B, C) score matrix + validity mask."""
    rows, cols, ex, pos = [], [], [], []
    for i, s in enumerate(seqs):
        for j, p in enumerate(s.positions):
            rows.append(i)
            cols.append(j)
            ex.append(s.example)
            pos.append(p)
    dev = out.device
    idx = (torch.tensor(ex, device=dev), torch.tensor(pos, device=dev))
    vals = out[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]
    scores = torch.zeros((n_examples, n_cols), dtype=out.dtype, device=dev).index_put(idx, vals)
    mask = torch.zeros((n_examples, n_cols), dtype=torch.bool, device=dev).index_put(
        idx, torch.ones_like(vals, dtype=torch.bool)
    )
    return scores, mask
