"""Prompt templates: the one place that decides what text each ranker kind reads.

Causal prompts are built from three pieces (prefix, history, suffix) so the collator can
truncate the history from the left (dropping the oldest items) and never the question.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

YESNO_PREFIX = (
    "Instruction: Given the items a user recently interacted with, answer whether the user "
    "will like the candidate item. Answer Yes or No.\nHistory: "
)
YESNO_SUFFIX = "\nCandidate: {candidate}\nAnswer:"
YES, NO = " Yes", " No"

LISTWISE_PREFIX = (
    "Instruction: Given the items a user recently interacted with, pick the candidate the user "
    "will like most. Answer with the candidate's letter.\nHistory: "
)
LISTWISE_CANDIDATES = "\nCandidates:"
LISTWISE_ITEM = "\n({label}) {candidate}"
LISTWISE_SUFFIX = "\nAnswer:"
INDEX_LABELS = tuple(string.ascii_uppercase)  # a listwise window holds at most 26 candidates


def index_label_tokens(n: int) -> list[str]:
    """The verbalized answers for the first ``n`` listwise positions (' A', ' B', ...)."""
    if n > len(INDEX_LABELS):
        raise ValueError(f"listwise window {n} exceeds the {len(INDEX_LABELS)} index labels")
    return [" " + label for label in INDEX_LABELS[:n]]


def yesno_pieces(candidate_text: str) -> tuple[str, str]:
    """(prefix, suffix) around the history for a TALLRec-style yes/no prompt."""
    return YESNO_PREFIX, YESNO_SUFFIX.format(candidate=candidate_text)


def listwise_pieces(candidate_texts: Sequence[str]) -> tuple[str, list[str], str]:
    """(prefix, one line per candidate, suffix) for a LlamaRec-style listwise prompt.

    The prompt is prefix + history + candidate lines + suffix.
    """
    lines = [LISTWISE_CANDIDATES] + [
        LISTWISE_ITEM.format(label=INDEX_LABELS[i], candidate=c) for i, c in enumerate(candidate_texts)
    ]
    return LISTWISE_PREFIX, lines, LISTWISE_SUFFIX


def template_words() -> list[str]:
    """Words of every template (used to build tiny test tokenizers that know them)."""
    text = YESNO_PREFIX + YESNO_SUFFIX + LISTWISE_PREFIX + LISTWISE_CANDIDATES + LISTWISE_ITEM + LISTWISE_SUFFIX + YES + NO
    return text.replace("\n", " ").split()
