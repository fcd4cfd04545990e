"""Is an explanation grounded? It may name only facts in the item's text, the user's history
texts and their request: titles, genres, tags, years.

Three checks, each a list of what the sentence claims that the facts do not hold:

- **items**: a catalog title (year stripped) that is neither the recommended item nor one the
  user watched, nor a phrase of the facts. An explanation that names another movie is an
  invented recommendation. Titles of one short word ("Heat", "Up") and titles that are genre
  names ("Romance") are skipped: they are ordinary words too.
- **genres**: a catalog genre word ("Horror") that neither the item nor the history has.
- **names**: a capitalised word inside a sentence (a proper noun: an actor, a place, a
  franchise) or a four-digit year that appears nowhere in the facts.

``grounded`` is all three empty. The check is strict on purpose (a served explanation that
invents a fact misleads the user; one that is dropped only costs a sentence), and it is
lexical: a paraphrase of a tag ("space" for "outer space") passes, a new name does not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rayrec.data.text import parse_item_text

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*|\d{4}")
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_ALWAYS_OK = {"I", "I'm", "I've", "I'd", "You", "Your", "It", "This", "The", "A", "An"}


def _norm_title(title: str) -> str:
    return _YEAR.sub("", title).strip()


def _fields(item_text: str) -> tuple[str, list[str]]:
    title, genres, _ = parse_item_text(item_text)
    return title, genres


@dataclass(frozen=True)
class Grounding:
    invented_items: list[str] = field(default_factory=list)
    unsupported_genres: list[str] = field(default_factory=list)
    unsupported_names: list[str] = field(default_factory=list)

    @property
    def grounded(self) -> bool:
        return not (self.invented_items or self.unsupported_genres or self.unsupported_names)


class GroundingCheck:
    """Built once per catalog (its titles and genre vocabulary); :meth:`check` per sentence."""

    def __init__(self, item_texts: Iterable[str]) -> None:
        titles, genres = set(), set()
        for text in item_texts:
            title, gs = _fields(text)
            t = _norm_title(title)
            if len(t.split()) > 1 or len(t) >= 5:
                titles.add(t)
            genres.update(g.lower() for g in gs)
        self.genres = genres
        titles = {t for t in titles if t.lower() not in genres}  # "Romance" the genre, not the film
        # Titles by first word, longest first: "Alien 3" is matched before "Alien".
        self._by_first: dict[str, list[list[str]]] = {}
        for t in sorted(titles, key=len, reverse=True):
            words = _WORD.findall(t)
            if words:
                self._by_first.setdefault(words[0], []).append(words)

    def titles_in(self, text: str) -> list[str]:
        """Catalog titles named in ``text`` (whole words, case as in the catalog)."""
        words, found, i = _WORD.findall(text), [], 0
        while i < len(words):
            match = next((t for t in self._by_first.get(words[i], ()) if words[i:i + len(t)] == t), None)
            if match is None:
                i += 1
            else:
                found.append(" ".join(match))
                i += len(match)
        return found

    def check(self, explanation: str, item_text: str, history_texts: Sequence[str] = (),
              request: str | None = None) -> Grounding:
        facts = [item_text, *history_texts, request or ""]
        allowed_titles = {_norm_title(_fields(t)[0]) for t in [item_text, *history_texts]}
        fact_words = {w.lower() for f in facts for w in _WORD.findall(f)}
        fact_genres = {g.lower() for t in [item_text, *history_texts] for g in _fields(t)[1]}
        fact_genres |= {w for w in fact_words if w in self.genres}  # a genre the request names

        allowed = {" ".join(_WORD.findall(t)) for t in allowed_titles}
        fact_text = " ".join(" ".join(_WORD.findall(f)) for f in facts).lower()
        # Another film's title, unless it is a phrase of the facts (a tag, the request's words).
        invented = [t for t in self.titles_in(explanation)
                    if not any(t in a for a in allowed) and t.lower() not in fact_text]
        words = _WORD.findall(explanation)
        parts = {p for w in words for p in [w, *w.split("-")]}
        genres = sorted({w for w in parts if w.lower() in self.genres and w.lower() not in fact_genres})
        names = []
        for sentence in re.split(r"(?<=[.!?])\s+", explanation):
            for pos, w in enumerate(_WORD.findall(sentence)):
                proper = pos > 0 and w[0].isupper() and w not in _ALWAYS_OK
                year = w.isdigit()
                if (proper or year) and w.lower() not in fact_words and w.lower() not in self.genres:
                    names.append(w)
        return Grounding(sorted(set(invented)), genres, sorted(set(names)))
