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
    # policy knobs
    epsilon: float = Field(0.1, ge=0, le=1)
    temperature: float = Field(0.1, gt=0)
    ucb_c: float = Field(1.0, ge=0)
    linucb_alpha: float = Field(1.0, ge=0)
    lin_thompson_v: float = Field(0.5, gt=0)  # posterior scale of linear Thompson sampling
    ridge_lambda: float = Field(1.0, gt=0)  # prior precision of the linear models
    # Per-arm value = (sum of rewards + prior_strength * prior(score)) / (pulls + prior_strength):
    # the candidate's score is a prior worth prior_strength pseudo-observations.
    prior_strength: float = Field(1.0, gt=0)
    score_is_logit: bool = True  # Bernoulli priors use sigmoid(score); else score as-is
    gaussian_noise: float = Field(1.0, gt=0)  # reward noise sd of Gaussian Thompson sampling
    propensity_draws: int = Field(200, ge=1)  # Monte-Carlo posterior draws for TS propensities
    diversity: Literal["none", "mmr", "dpp"] = "none"
    diversity_weight: float = Field(0.0, ge=0, le=1)  # 0 = pure relevance, 1 = pure diversity
    # environments
    candidates: Literal["noisy_top", "random"] = "noisy_top"
    score_noise: float = Field(1.0, ge=0)  # sd of the noise added to true logits as scores
    ratings_path: str | None = None  # semi_synthetic: ratings.csv (default: data.path)
    semi_synthetic_items: int = Field(600, ge=10)  # most-rated movies kept in the click model
    replay_candidates: int = Field(10, ge=2)  # uniform logging for replay: candidates per event
    # off-policy evaluation
    ope_clip: float | None = Field(None, gt=0)
    bootstrap: int = Field(200, ge=10)
    # serving state (BanditStateActor)
    state_path: str | None = None  # default: <explore_dir>/bandit_state.pkl
    persist_every: int = Field(100, ge=1)  # updates between persists
    feedback_window_s: float = Field(600.0, gt=0)  # shown items without feedback -> reward 0
    parallel: bool = True
    out: str | None = None  # default: <run_dir>/explore
