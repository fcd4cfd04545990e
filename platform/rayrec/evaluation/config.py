"""Config section for offline evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.configbase import Section


class EvalConfig(Section):
    """Which split, which candidates, which metrics."""

    split: Literal["valid", "test"] = "test"
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20])
    candidates: Literal["sampled", "retrieval", "popularity"] = "sampled"
    num_candidates: int = Field(100, ge=2)
    max_users: int | None = Field(None, ge=1)
    checkpoint: str | None = None  # default: latest under the training storage path
    out: str | None = None  # default: <run_dir>/eval
