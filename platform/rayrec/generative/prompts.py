"""What the generator reads and, when tuned, learns to write.

The prompt holds the user's recent items (titles, oldest first) and/or their free-text
request; the answer is one catalog title followed by the end token. Instruct models get their
own chat template (SmolLM2: ``<|im_start|>user ... <|im_end|><|im_start|>assistant``); models
without one (the tiny test models) get the same text with an ``Answer:`` cue.
"""

from __future__ import annotations

from collections.abc import Sequence

SYSTEM = "You recommend movies from a fixed catalog. Answer with one movie title only."


def messages(history: Sequence[str], request: str | None = None) -> list[dict[str, str]]:
    """The chat turn asking for one more item."""
    parts = []
    if history:
        parts.append("Movies I watched, oldest first: " + "; ".join(history) + ".")
    if request and request.strip():
        parts.append(f"What I want now: {request.strip()}")
    parts.append("Recommend one more movie I will like. Answer with its title only.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(parts)}]


def render(tokenizer, history: Sequence[str], request: str | None = None) -> str:
    """The prompt text, ending where the model starts writing the title."""
    turn = messages(history, request)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in turn) + "\nAnswer: "


def target(tokenizer, title: str) -> str:
    """What a tuned model learns to write after :func:`render`: the title, then the end token."""
    return title + tokenizer.eos_token
