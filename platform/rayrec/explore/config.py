"""Config section for exploration policies and bandit experiments."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.configbase import Section

PolicyName = Literal[
    "greedy", "epsilon_greedy", "softmax", "ucb1", "thompson_beta", "thompson_gaussian",
    "linucb", "lin_thompson", "neural_linear_ts", "uniform",
]


class ExploreConfig(Section):
    """Exploration policies and the bandit experiment job."""

    policies: list[PolicyName] = Field(
        default_factory=lambda: ["greedy", "epsilon_greedy", "softmax", "ucb1", "thompson_beta"],
        description="Exploration policies the bandit experiment compares.",
    )
    environment: Literal["synthetic", "semi_synthetic", "replay", "arrivals", "semi_synthetic_arrivals"] = Field(
        "synthetic",
        description="The experiment's world: the synthetic world, a click model fit on a rating log "
        "(semi_synthetic), offline replay of uniformly logged data, or either world with item arrivals.",
    )
    seeds: int = Field(5, ge=1, description="Independent runs (seeds) of every policy.")
    horizon: int = Field(2000, ge=1, description="Requests (rounds) per run.")
    slate_size: int = Field(5, ge=1, description="Items shown per request.")
    num_candidates: int = Field(
        50, ge=1,
        description="Candidates a policy chooses the slate from, per request.",
    )
    # policy knobs
    epsilon: float = Field(
        0.1, ge=0, le=1,
        description="epsilon_greedy: chance of filling a slot with a random candidate.",
    )
    temperature: float = Field(
        0.1, gt=0,
        description="softmax: temperature of the sampling over scores (lower: greedier).",
    )
    ucb_c: float = Field(1.0, ge=0, description="ucb1: weight of the exploration bonus.")
    linucb_alpha: float = Field(1.0, ge=0, description="linucb: weight of the confidence-width bonus.")
    lin_thompson_v: float = Field(
        0.5, gt=0,
        description="lin_thompson: posterior scale of linear Thompson sampling.",
    )
    # The contextual policies' Bayesian linear head over x = [1, score, phi] (explore/linear.py):
    # prior mean [0, score_weight, 0...] (the model's order), prior precision
    # [calibration_precision, score_weight_precision, ridge_lambda...]; noise sigma^2 ~ InvGamma(a, b).
    ridge_lambda: float = Field(10.0, gt=0, description="prior precision of the representation features phi")
    score_weight: float = Field(1.0, gt=0, description="prior mean of the model score's weight")
    min_score_weight: float = Field(0.1, gt=0, description="floor of the score's weight: feedback calibrates the model's order, never reverses it")
    calibration_precision: float = Field(1.0, gt=0, description="prior precision of the intercept")
    score_weight_precision: float = Field(100.0, gt=0, description="prior precision of the score's weight: high keeps the model's order until strong evidence")
    noise_prior_a: float = Field(2.0, gt=1, description="InvGamma shape of the reward noise prior")
    noise_prior_b: float = Field(1.0, gt=0, description="InvGamma scale of the reward noise prior")
    # phi (explore/features.py): projected user-state x item-vector features, and a block that
    # only new items (no interactions) have; scaling a block = dividing its prior precision.
    feature_dim: int = Field(16, ge=1, le=256, description="width D of the projected representation")
    context_scale: float = Field(0.1, ge=0, description="scale of the user x item block (all items)")
    new_item_scale: float = Field(6.0, ge=0, description="scale of the new-item intercept: its prior sd is new_item_scale / sqrt(ridge_lambda) logits")
    new_context_scale: float = Field(1.0, ge=0, description="scale of the user x item part of the new-item block")
    new_item_sd: float = Field(0.5, ge=0, description="prior sd of a new item's own offset, in logits (0: none)")
    max_item_effects: int = Field(100_000, ge=1, description="new items whose own offset a policy keeps (oldest dropped)")
    # Per-arm value = (sum of rewards + prior_strength * prior(score)) / (pulls + prior_strength):
    # the candidate's score is a prior worth prior_strength pseudo-observations.
    prior_strength: float = Field(
        1.0, gt=0, description="Pseudo-observations the candidate's score is worth as each arm's prior."
    )
    score_is_logit: bool = Field(
        True, description="Bernoulli priors use sigmoid(score) when true, else the score as-is."
    )
    gaussian_noise: float = Field(
        1.0, gt=0,
        description="thompson_gaussian: reward noise standard deviation.",
    )
    propensity_draws: int = Field(
        200, ge=1, description="Monte-Carlo posterior draws that estimate Thompson sampling's propensities."
    )
    # with a diversity re-ranker each draw costs k gain steps: the draws are capped at this / k
    max_propensity_steps: int = Field(
        2000, ge=8, description="Cap on propensity draws x slate size when a diversity re-ranker is on."
    )
    diversity: Literal["none", "mmr", "dpp"] = Field(
        "none", description="Diversity re-ranker of the slate: none, maximal marginal relevance or a DPP.",
    )
    diversity_weight: float = Field(
        0.0, ge=0, le=1,
        description="Diversity re-ranker's trade-off: 0 = pure relevance, 1 = pure diversity.",
    )
    # environments
    candidates: Literal["noisy_top", "random"] = Field(
        "noisy_top", description="Candidates per request: the top by noisy score, or a uniform random sample.",
    )
    score_noise: float = Field(
        1.0, ge=0,
        description="Standard deviation of the noise added to true logits as scores.",
    )
    ratings_path: str | None = Field(
        None, description="semi_synthetic: the ratings.csv the click model is fit on; None: data.path."
    )
    semi_synthetic_items: int = Field(
        600, ge=10,
        description="semi_synthetic: most-rated movies kept in the click model.",
    )
    replay_candidates: int = Field(10, ge=2, description="replay: candidates per uniformly logged event.")
    # off-policy evaluation
    ope_clip: float | None = Field(
        None, gt=0,
        description="Off-policy evaluation: clip importance weights at this value; None: no clipping.",
    )
    bootstrap: int = Field(200, ge=10, description="Bootstrap resamples for off-policy confidence intervals.")
    # worlds with arrivals (environment: arrivals / semi_synthetic_arrivals)
    arrival_fraction: float = Field(0.15, ge=0, lt=1, description="share of the catalog released during the horizon")
    arrival_window: float = Field(0.2, gt=0, le=1, description="share of the horizon over which they are released, at a constant rate")
    new_item_gap: float = Field(2.0, ge=0, description="logits the model under-scores an item it never saw")
    text_noise: float = Field(0.3, ge=0, description="sd of a new item's text vector around its true taste vector")
    new_item_age: int = Field(0, ge=0, description="rounds after release an item counts as new (0: until the end)")
    # serving state (BanditStateActor)
    state_path: str | None = Field(
        None, description="Where a policy's learned state is persisted; None: <explore_dir>/bandit_state.npz."
    )
    max_pending: int = Field(10000, ge=1, description="slates awaiting feedback in a state actor; the oldest are learned early")
    max_pending_mb: float = Field(256.0, gt=0, description="bytes those slates may hold (features of k items each); the oldest are learned early past it")
    # A source is a client key's id (the endpoint with serve.require_api_key): what one client can
    # teach the policy everyone is served by. None (no keys) is one anonymous source, not limited.
    source_updates_per_s: float | None = Field(5.0, gt=0, description="slates one keyed source may teach per second on average (a token bucket, burst 60 s of it); the rest are not learned")
    unreported_slates_learn: bool = Field(False, description="learn the zeros of slates from a keyed source that never sent feedback on its own slates (a client that reports nothing would only demote what it is shown)")
    persist_every: int = Field(100, ge=1, description="Policy updates between persists of the learned state.")
    feedback_window_s: float = Field(
        600.0, gt=0, description="Seconds after which shown items without feedback are learned as reward 0."
    )
    parallel: bool = Field(
        True,
        description="Run the experiment's (policy, seed) runs as Ray tasks; False: one process.",
    )
    out: str | None = Field(
        None,
        description="Where experiment results are written; None: <run_dir>/explore.",
    )
