"""Ranker kinds, registered: what each kind needs and how it turns text into a score.

A kind is one :class:`RankerKindSpec` and one :func:`register` call; the collator
(:mod:`rayrec.models.collate`), the model (:mod:`rayrec.models.ranker`) and the config's check
of ``model.kind`` read the spec, never the kind's name.

  cross_encoder    an encoder (BERT family) reads "candidate [SEP] history"; a linear head on
                   the pooled state is the score
  causal_yesno     a causal LM reads a yes/no question per candidate (TALLRec); the score is
                   logit(" Yes") - logit(" No") at the answer slot
  causal_listwise  a causal LM reads a window of candidates labelled (A), (B), ... (LlamaRec);
                   each candidate's score is its label's logit at the answer slot
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rayrec.models import prompts

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RankerKindSpec:
    """``causal``: needs a causal LM backbone (else an encoder and a linear head).
    ``listwise``: one prompt scores a window of ``model.listwise_window`` candidates.
    ``answer_words(cfg)``: the words whose first-token logits are read at the answer slot
    (``cfg`` a :class:`rayrec.models.config.ModelConfig`, which imports this registry).
    ``pieces(texts)``: the prompt's text before and after the history for one candidate (or
    one window). ``score(picked)``: the answer logits (S, words) to scores (S, window)."""

    name: str
    causal: bool
    listwise: bool = False
    answer_words: Callable[[Any], list[str]] | None = None
    pieces: Callable[[Sequence[str]], tuple[str, str]] | None = None
    score: Callable[[torch.Tensor], torch.Tensor] | None = None

    def window(self, cfg: Any) -> int:
        """Candidates per scored sequence."""
        return cfg.listwise_window if self.listwise else 1


KINDS: dict[str, RankerKindSpec] = {}


def register(spec: RankerKindSpec) -> RankerKindSpec:
    KINDS[spec.name] = spec
    return spec


def kind_of(cfg: Any) -> RankerKindSpec:
    """The spec of ``cfg.kind`` (a ModelConfig)."""
    try:
        return KINDS[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown ranker kind {cfg.kind!r}; registered: {sorted(KINDS)}") from None


def _listwise_pieces(texts: Sequence[str]) -> tuple[str, str]:
    prefix, lines, tail = prompts.listwise_pieces(texts)
    return prefix, "".join(lines) + tail


register(RankerKindSpec("cross_encoder", causal=False))
register(RankerKindSpec(
    "causal_yesno", causal=True,
    answer_words=lambda cfg: [prompts.YES, prompts.NO],
    pieces=lambda texts: prompts.yesno_pieces(texts[0]),
    score=lambda picked: (picked[:, 0] - picked[:, 1]).unsqueeze(-1),
))
register(RankerKindSpec(
    "causal_listwise", causal=True, listwise=True,
    answer_words=lambda cfg: prompts.index_label_tokens(cfg.listwise_window),
    pieces=_listwise_pieces,
    score=lambda picked: picked,
))
