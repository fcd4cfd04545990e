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

from rayrec.models.config import ModelConfig
from rayrec.models.kinds import kind_of


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
        self.spec = kind_of(cfg)
        if causal and not self.spec.causal:
            raise ValueError(f"kind {cfg.kind!r} needs an encoder backbone (BERT family)")
        if not causal and self.spec.causal:
            raise ValueError(f"kind {cfg.kind!r} needs a causal LM backbone (GPT-2/Llama/Qwen)")
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError("tokenizer has neither a pad nor an eos token")
        if causal:
            self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
            words = self.spec.answer_words(cfg)
            self.answer_ids = [self._first_token(w) for w in words]
            if len(set(self.answer_ids)) != len(self.answer_ids):
                raise ValueError(f"answer words {words} do not map to distinct first tokens")
        else:
            tokenizer.truncation_side = "left"  # cut the oldest history first
        # Candidate texts recur across requests (a catalog): their tokens are kept, bounded.
        self._cand_cache: dict[str, list[int]] = {}
        self._pieces_cache: dict[str, tuple[list[int], list[int]]] = {}
        self._pair = None if causal else PairTemplate.probe(
            tokenizer, self._encode_pairs_slow, self._candidate, cfg.max_length, self.pad_id)

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
            if not self.spec.listwise:
                seqs += [SeqPlan(ex, hist, (j,), (c,), None if priors is None else (priors[j],))
                         for j, c in enumerate(cands)]
                continue
            order = list(range(len(cands)))
            if rng is not None:
                rng.shuffle(order)
            w = self.spec.window(self.cfg)
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
        width = self.spec.window(self.cfg)
        prior = torch.zeros((len(seqs), width, n_feat), dtype=torch.float32)
        for i, s in enumerate(seqs):
            if s.priors is not None:
                vals = torch.tensor(s.priors, dtype=torch.float32).reshape(len(s.priors), n_feat)
                prior[i, : len(s.priors)] = vals
        return {"prior": prior}

    def _cand_ids(self, texts: Sequence[str]) -> list[list[int]]:
        ids = self.tok(list(texts), add_special_tokens=False)["input_ids"]
        return [x[: self.cfg.max_candidate_tokens] for x in ids]

    def _histories(self, seqs: Sequence[SeqPlan]) -> dict[str, list[int]]:
        """Each distinct history tokenised once (a request's candidates share one)."""
        texts = list(dict.fromkeys(s.history for s in seqs))
        return dict(zip(texts, self.tok(texts, add_special_tokens=False)["input_ids"], strict=True))

    def _cached(self, cache: dict, key, make):
        value = cache.get(key)  # one read and one write: safe beside another thread's clear()
        if value is None:
            if len(cache) >= CACHE_LIMIT:
                cache.clear()  # a new catalog or a long-running replica: start over, stay bounded
            value = cache[key] = make(key)
        return value

    def _candidate(self, text: str) -> list[int]:
        """A candidate's tokens as the pair call saw them: cut to ``max_candidate_tokens``,
        decoded and tokenised again (the text the model was trained on)."""
        return self._cached(self._cand_cache, text, lambda t: self._ids(self.tok.decode(self._cand_ids([t])[0])))

    def _causal_pieces(self, texts: tuple[str, ...]) -> tuple[list[int], list[int]]:
        """The prompt's tokens before and after the history, for one candidate (kept per
        candidate) or one window (listwise: windows rarely recur, so none are kept)."""
        def make(texts):
            prefix, suffix = self.spec.pieces([self.tok.decode(x) for x in self._cand_ids(texts)])
            return self.bos + self._ids(prefix), self._ids(suffix)
        if self.spec.listwise:
            return make(texts)
        return self._cached(self._pieces_cache, texts[0], lambda _: make(texts))

    def _encode_pairs_slow(self, seqs: Sequence[SeqPlan]) -> dict[str, torch.Tensor]:
        """The tokenizer's own pair call: the reference the template is checked against."""
        cands = self.tok.batch_decode(self._cand_ids([s.texts[0] for s in seqs]))
        return dict(self.tok(cands, [s.history for s in seqs], truncation="only_second",
                             max_length=self.cfg.max_length, padding=True, return_tensors="pt"))

    def encode(self, seqs: Sequence[SeqPlan]) -> dict[str, torch.Tensor]:
        """Padded model inputs for ``seqs`` (right padding for encoders, left for causal LMs)."""
        if not self.causal:
            if self._pair is None:  # a tokenizer whose pairs the template cannot reproduce
                return self._encode_pairs_slow(seqs) | self._priors(seqs)
            hists = self._histories(seqs)
            pairs = [(self._candidate(s.texts[0]), hists[s.history]) for s in seqs]
            return self._pair.batch(pairs, self.cfg.max_length, self.pad_id) | self._priors(seqs)
        hists = self._histories(seqs)
        rows = []
        for s in seqs:
            head, tail = self._causal_pieces(s.texts)
            budget = max(0, self.cfg.max_length - len(head) - len(tail))
            hist = hists[s.history][-budget:] if budget else []
            rows.append(head + hist + tail)
        ids, mask = pad_rows(rows, self.pad_id, left=True)  # a causal LM reads the answer last
        return {"input_ids": ids, "attention_mask": mask} | self._priors(seqs)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]


def pad_rows(rows: Sequence[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of ``rows`` padded with ``pad_id`` to the longest, on the left or right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


CACHE_LIMIT = 50_000  # candidates kept per collator and cache: <= ~24 ids (~60 for a yes/no
# prompt's pieces) each, tens of MB at most; a larger catalog starts over when full


@dataclass(frozen=True)
class PairTemplate:
    """How an encoder's tokenizer joins (candidate, history): the special tokens before, between
    and after the two parts, and the segment id of each. Read off one probe pair, so a request
    tokenises its history once and each candidate once per catalog instead of every pair again
    (50 pairs of MiniLM at 64 tokens: 18 ms -> 2 ms on one core; on an H100 the tokenising was
    ~80% of the ranking call). History is cut oldest-first to fit ``max_length``, as
    ``truncation="only_second"`` with left truncation does."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    types: tuple[tuple[int, ...], int, tuple[int, ...], int, tuple[int, ...]] | None

    @classmethod
    def probe(cls, tok, reference, candidate, max_length: int, pad_id: int) -> PairTemplate | None:
        """The template, or None when it does not reproduce ``reference`` (the tokenizer's own
        pair call) on a few probe pairs, e.g. a tokenizer that merges across the boundary.
        ``candidate(text)``: a candidate's tokens as the collator feeds them."""
        a, b = (tok(w, add_special_tokens=False)["input_ids"] for w in ("hello", "world"))
        enc = tok("hello", "world")
        ids, tt = list(enc["input_ids"]), enc.get("token_type_ids")
        try:
            ia = next(i for i in range(len(ids)) if ids[i : i + len(a)] == a)
            ib = next(i for i in range(ia + len(a), len(ids)) if ids[i : i + len(b)] == b)
        except StopIteration:
            return None
        ja, jb = ia + len(a), ib + len(b)
        types = None if tt is None else (tuple(tt[:ia]), tt[ia], tuple(tt[ja:ib]), tt[ib], tuple(tt[jb:]))
        template = cls(tuple(ids[:ia]), tuple(ids[ja:ib]), tuple(ids[jb:]), types)
        probes = [SeqPlan(0, h, (0,), (c,)) for c, h in (
            ("Toy Story (1995) Adventure|Animation|Children", "Heat (1995) | Alien (1979) | " * 12),
            ("Amélie (2001)", ""), ("Wall·E (2008) don't", "C'era una volta il West (1968)"))]
        try:
            want = reference(probes)
        except Exception:  # e.g. max_length too short for a probe: keep the tokenizer's own call
            return None
        pairs = [(candidate(s.texts[0]), tok(s.history, add_special_tokens=False)["input_ids"]) for s in probes]
        got = template.batch(pairs, max_length, pad_id)
        same = set(want) == set(got) and all(torch.equal(got[k], want[k]) for k in want)
        return template if same else None

    def batch(self, pairs: Sequence[tuple[list[int], list[int]]], max_length: int,
              pad_id: int) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` (and ``token_type_ids``) of the pairs."""
        fixed = len(self.prefix) + len(self.middle) + len(self.suffix)
        rows, types = [], []
        for cand, hist in pairs:
            cand = cand[: max(0, max_length - fixed)]  # never over max_length (the pair call raises)
            budget = max_length - fixed - len(cand)
            hist = hist[-budget:] if budget > 0 else []
            rows.append([*self.prefix, *cand, *self.middle, *hist, *self.suffix])
            if self.types is not None:
                t0, ta, tm, tb, ts = self.types
                types.append([*t0, *[ta] * len(cand), *tm, *[tb] * len(hist), *ts])
        ids, mask = pad_rows(rows, pad_id, left=False)
        out = {"input_ids": ids, "attention_mask": mask}
        if self.types is not None:
            out["token_type_ids"] = pad_rows(types, 0, left=False)[0]
        return out


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
