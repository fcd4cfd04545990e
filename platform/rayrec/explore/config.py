"""Config section for exploration policies and bandit experiments."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.configbase import Section

PolicyName = Literal[
    "greedy", "epsilon_greedy", "softmax", "ucb1", "thompson_beta", "thompson_gaussian",
    "linucb", "lin_thompson", "uniform",
]


class ExploreConfig(Section):
    """Exploration policies and the bandit experiment job."""

    policies: list[PolicyName] = Field(
        default_factory=lambda: ["greedy", "epsilon_greedy", "softmax", "ucb1", "thompson_beta"]
    )
    environment: Literal["synthetic", "semi_synthetic", "replay"] = "synthetic"
    seeds: int = Field(5, ge=1)
    horizon: int = Field(2000, ge=1)
    slate_size: int = Field(5, ge=1)
    num_candidates: int = Field(50, ge=1)
    epsilon: float = Field(0.1, ge=0, le=1)
    temperature: float = Field(0.1, gt=0)
    ucb_c: float = Field(1.0, ge=0)
    linucb_alpha: float = Field(1.0, ge=0)
    diversity: Literal["none", "mmr", "dpp"] = "none"
    diversity_weight: float = Field(0.0, ge=0, le=1)
    parallel: bool = True
    out: str | None = None  # default: <run_dir>/explore
