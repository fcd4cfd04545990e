"""Item and history text: what the ranker reads. Used by preprocessing AND serving.

Item text is kept short (the ranker has a token budget): ``Title (Year) | Genres: A, B | Tags: x, y``.
A history is the user's recent item texts, oldest first, joined by ``HISTORY_SEP``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

HISTORY_SEP = "; "
EMPTY_HISTORY = "No history."
MAX_GENRES = 3
MAX_TAGS = 3
MAX_TITLE_CHARS = 80


def render_history(item_texts: Sequence[str]) -> str:
    """The one rendering of a user's recent items (oldest first) into the history text."""
    if len(item_texts) == 0:
        return EMPTY_HISTORY
    return HISTORY_SEP.join(item_texts)


def render_histories(item_texts: pa.ListArray | pa.ChunkedArray) -> pa.Array:
    """Vectorised :func:`render_history` over a list<string> array (same output per row)."""
    joined = pc.binary_join(item_texts, HISTORY_SEP)
    empty = pc.equal(pc.list_value_length(item_texts), 0)
    return pc.if_else(empty, pa.scalar(EMPTY_HISTORY), joined)


def item_text(title: str, genres: Sequence[str] = (), tags: Sequence[str] = ()) -> str:
    """``Title | Genres: A, B | Tags: x, y``; empty parts are left out, lists are capped."""
    title = " ".join(str(title).split())[:MAX_TITLE_CHARS] or "Untitled"
    parts = [title]
    genres = [g for g in genres if g and g != "(no genres listed)"][:MAX_GENRES]
    if genres:
        parts.append("Genres: " + ", ".join(genres))
    clean_tags: list[str] = []
    for t in tags:
        t = " ".join(str(t).split()).lower()
        if t and t not in clean_tags:
            clean_tags.append(t)
        if len(clean_tags) == MAX_TAGS:
            break
    if clean_tags:
        parts.append("Tags: " + ", ".join(clean_tags))
    return " | ".join(parts)


def parse_item_text(text: str) -> tuple[str, list[str], list[str]]:
    """(title, genres, tags) of an :func:`item_text` string (the inverse, for what reads it:
    explanations and their grounding check)."""
    parts = [p.strip() for p in text.split(" | ")]
    fields = {"Genres:": [], "Tags:": []}
    for p in parts[1:]:
        for key in fields:
            if p.startswith(key):
                fields[key] = [v.strip() for v in p[len(key):].split(",") if v.strip()]
    return parts[0], fields["Genres:"], fields["Tags:"]
