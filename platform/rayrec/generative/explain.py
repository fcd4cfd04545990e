"""Explanations: one sentence, written by the causal LM, on why an item fits a user.

The prompt gives the model only facts from the catalog: the user's recent titles, the
recommended item (``Title (Year) | Genres: ... | Tags: ...``), the watched item it shares most
genres and tags with and what they share, and the user's request; it asks for nothing else,
and the answer is started for the model (``You might like <title> because``), which keeps a
small model on this item and in one sentence (SmolLM2-135M without it echoed the prompt or
described other films). :mod:`rayrec.generative.grounding` then checks what it wrote.

Time: greedy decoding costs one forward pass per token (SmolLM2-135M: ~20-30 ms per token on
2 CPU cores, so a 25-word sentence is ~0.5-1 s). A request's budget is a wall-clock deadline:
items are explained best first while the next one is expected to fit (running mean of the
seconds per explanation), and ``generate(max_time=...)`` cuts the one in progress at the
deadline. A sentence cut by the deadline or by ``max_new_tokens`` is marked (``cut``) and
never served half-written.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rayrec.data.text import parse_item_text

SYSTEM = ("You explain movie recommendations in one short sentence. Use only the facts given: "
          "titles, genres and tags. Do not mention any other movie.")
HISTORY_ITEMS = 5  # newest items in the prompt: enough taste, few tokens
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


@dataclass(frozen=True)
class Explanation:
    text: str  # the first sentence written (possibly cut: see ``cut``)
    seconds: float
    tokens: int
    cut: str | None = None  # "time" (the deadline) or "length" (max_new_tokens) ended it mid-sentence


def short_title(title: str) -> str:
    """``Speech, The (2010)`` -> ``The Speech``... MovieLens' inverted article and year off."""
    t = _YEAR.sub("", title).strip()
    for article in ("The", "A", "An"):
        if t.endswith(f", {article}"):
            return f"{article} {t[: -len(article) - 2]}"
    return t


def shared_facts(history_texts: Sequence[str], item_text: str) -> tuple[str | None, list[str]]:
    """The watched item that shares most genres and tags with the recommended one (the newest
    on ties), and what they share: the facts an explanation should rest on."""
    _, genres, tags = parse_item_text(item_text)
    mine = {v.lower(): v for v in [*genres, *tags]}
    best, best_shared = None, []
    for text in history_texts:  # oldest first: a later tie replaces an earlier one
        title, g, t = parse_item_text(text)
        shared = [mine[v.lower()] for v in [*g, *t] if v.lower() in mine]
        if shared and len(shared) >= len(best_shared):
            best, best_shared = short_title(title), list(dict.fromkeys(shared))
    return best, best_shared


def messages(history_texts: Sequence[str], item_text: str, request: str | None,
             anchor: str | None, shared: Sequence[str]) -> list[dict[str, str]]:
    """The chat turn asking why ``item_text`` fits the user, with the facts it shares with
    ``anchor`` (:func:`shared_facts`)."""
    parts = []
    if history_texts:
        titles = [short_title(parse_item_text(t)[0]) for t in history_texts[-HISTORY_ITEMS:]]
        parts.append("Movies I watched: " + "; ".join(titles) + ".")
    if request and request.strip():
        parts.append(f"What I asked for: {request.strip()}")
    parts.append(f"Recommended movie: {item_text}")
    if anchor:
        parts.append(f"What it shares with {anchor}, a movie I watched: {', '.join(shared)}.")
    parts.append("In one sentence, why might I like the recommended movie? Use only the facts above.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(parts)}]


def render(tokenizer, history_texts: Sequence[str], item_text: str,
           request: str | None = None) -> tuple[str, str]:
    """(prompt, answer prefix): the prompt ends inside the answer, after the prefix written for
    the model (the item's own name and the watched film it is most like), which keeps it on
    this item, on the shared facts, in one sentence."""
    anchor, shared = shared_facts(history_texts[-HISTORY_ITEMS:], item_text)
    turn = messages(history_texts, item_text, request, anchor, shared)
    if getattr(tokenizer, "chat_template", None):
        head = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    else:
        head = "\n".join(m["content"] for m in turn) + "\nAnswer: "
    like = f", like {anchor}," if anchor else ""
    prefix = f"You might like {short_title(parse_item_text(item_text)[0])} because{like}"
    return head + prefix, prefix


def first_sentence(text: str) -> str:
    """The answer's first sentence (models often go on with a second one or a new turn)."""
    text = " ".join(text.replace("\n", " ").split())
    for i, ch in enumerate(text):
        if ch in ".!?" and (i + 1 == len(text) or text[i + 1] == " ") and i > 10:
            return text[: i + 1]
    return text


class Explainer:
    """Explanations for a slate's top items inside a deadline (one model, greedy decoding)."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 40) -> None:
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self._s_per_item: float | None = None  # running mean, seconds per explanation

    @torch.inference_mode()
    def one(self, history_texts: Sequence[str], item_text: str, request: str | None,
            max_time: float | None = None) -> Explanation:
        prompt, prefix = render(self.tokenizer, history_texts, item_text, request)
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        t0 = time.perf_counter()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  pad_token_id=pad, max_time=max_time)
        seconds = time.perf_counter() - t0
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        finished = self.tokenizer.eos_token_id in new  # the model ended its answer itself
        written = self.tokenizer.decode(new, skip_special_tokens=True)
        text = first_sentence(f"{prefix} {written.lstrip()}") if written.strip() else ""
        cut = None
        if not text or not (finished or text.endswith((".", "!", "?"))):  # stopped mid-sentence
            cut = "time" if max_time is not None and seconds >= max_time else "length"
        return Explanation(text, seconds, len(new), cut)

    def explain(self, history_texts: Sequence[str], item_texts: Sequence[str], request: str | None,
                deadline: float) -> list[Explanation | None]:
        """One entry per item, best first; None for items the deadline (wall clock) left out."""
        out: list[Explanation | None] = []
        for text in item_texts:
            left = deadline - time.time()
            if left <= 0 or (self._s_per_item is not None and self._s_per_item > left):
                out.append(None)
                continue
            e = self.one(history_texts, text, request, max_time=left)
            out.append(e)
            prev = self._s_per_item
            self._s_per_item = e.seconds if prev is None else 0.8 * prev + 0.2 * e.seconds
        return out
