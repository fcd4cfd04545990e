"""Config section for offline evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.configbase import Section


class GenerativeEval(Section):
    """The generator as a system of the full-catalog evaluation (rayrec.generative): a causal LM
    names items through the catalog trie, seen items banned. Off by default: ~3 s per user for
    SmolLM2-135M on 2 CPU cores, so cap the users (evaluate.max_users) on a laptop."""

    enabled: bool = Field(False, description="Evaluate the generative recommender beside the other systems.")
    backbone: str = Field("smollm2-135m", description="The causal LM: embedded alias, hub id or local path.")
    adapter: str | None = Field(
        None,
        description="LoRA adapter: None = zero-shot; \"tuned\" = the run's <generator_dir>/adapter "
        "(`rayrec train-generator`); else a peft adapter directory or URI.",
    )
    k: int = Field(10, ge=1, description="Items generated per user (metrics beyond k count them as misses).")
    beams: int = Field(10, ge=1, description="Beam width of the generation (at least k is used).")
    history_items: int = Field(
        10, ge=1,
        description="Newest history titles in the prompt (for a tuned adapter: as generator.history_items).",
    )


class NewItemProtocol(Section):
    """The new-item protocol (rayrec.data.newitems, `rayrec new-items`): the newest items held
    out of every training stage, each user's first contact with one as the target."""

    enabled: bool = Field(
        False,
        description="Run the new-item protocol in `rayrec main`, after the warm evaluation.",
    )
    fraction: float = Field(
        0.15, gt=0, lt=1,
        description="Share of the items with a positive held out as new, newest by first positive.",
    )
    min_history: int = Field(2, ge=1, description="Positives a user needs before the target to be evaluated.")
    tower: bool = Field(True, description="Also LoRA-tune the item tower (rayrec.itemtower) and evaluate it.")
    ranker: bool = Field(
        True,
        description="Also train the ranker on the protocol's data, and evaluate it on top of every retriever.",
    )
    max_minutes: float | None = Field(
        None, gt=0,
        description="Training budget of each protocol retriever, in minutes; None: retriever.max_minutes.",
    )


class EvalConfig(Section):
    """Which split, which candidates, which metrics."""

    split: Literal["valid", "test"] = Field("test", description="Held-out split evaluated on.")
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20], description="Cut-offs K of HR@K and NDCG@K.")
    candidates: Literal["full", "sampled", "retrieval", "popularity"] = Field(
        "full",
        description="full: every system's top-K over the whole catalog minus what the user has seen "
        "(the headline); sampled / retrieval / popularity: re-ranking a fixed candidate set (diagnostics).",
    )
    mask: Literal["seen", "input_window"] = Field(
        "seen",
        description="full: which items no list may show. seen: everything the user interacted with "
        "before the held-out item (rayrec's headline); input_window: only the newest mask_window of "
        "them, the model's input (LlamaRec's protocol; older items may be shown and count as misses).",
    )
    mask_window: int | None = Field(
        None, ge=1, description="mask=input_window: history items masked; None: retriever.max_len.")
    num_candidates: int = Field(100, ge=2, description="Re-ranking diagnostics: candidates per user.")
    rank_depth: int = Field(20, ge=1, description="full: the retriever's top-N that the ranker re-scores.")
    rank_retrieved: bool = Field(
        True, description="full: also evaluate retriever + ranker when a ranker checkpoint exists."
    )
    baselines: bool = Field(
        True,
        description="full: evaluate popularity, ALS and text retrieval beside the system.",
    )
    max_users: int | None = Field(
        None, ge=1,
        description="Evaluate a sample of at most this many users; None: all users.",
    )
    checkpoint: str | None = Field(
        None,
        description="Ranker checkpoint to evaluate; None: the training run's best (else latest) checkpoint.",
    )
    require_checkpoint: bool = Field(
        True,
        description="Fail when no ranker checkpoint is found; False: evaluate the untuned ranker instead.",
    )
    scoring: Literal["auto", "ray", "local"] = Field(
        "auto",
        description="Where the ranker scores: Ray Data actors, in-process, or auto (Ray above "
        "local_max_users).",
    )
    local_max_users: int = Field(
        64, ge=0,
        description="scoring auto: users up to which scoring stays in-process.",
    )
    scoring_actors: int = Field(1, ge=1, description="Ray Data scoring actors.")
    scoring_cpus: float = Field(
        1.0, gt=0,
        description="CPUs per scoring actor (Ray sets its torch threads from it).",
    )
    score_batch_size: int = Field(16, ge=1, description="Users per Ray Data scoring batch.")
    beyond_k: int = Field(10, ge=1, description="List length for diversity, coverage and novelty.")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for paired confidence intervals.")
    seed: int = Field(
        0,
        description="Seed of the user sample and bootstrap (and of the trained baselines unless system_seed).",
    )
    # 1 in the demo, 3 for reference runs.
    seeds: int = Field(
        1,
        ge=1,
        description="full: retrain and evaluate every trained system under this many seeds (rayrec.recipes.seeds): "
        "per-seed figures, mean ± sd and each seed's paired CIs.",
    )
    system_seed: int | None = Field(
        None,
        description="Seed of the trained baselines (ALS); None: evaluate.seed.",
    )
    out: str | None = Field(None, description="Where evaluation results are written; None: <run_dir>/eval.")
    generative: GenerativeEval = Field(
        default_factory=GenerativeEval, description="The generative recommender as an evaluated system."
    )
    new_items: NewItemProtocol = Field(
        default_factory=NewItemProtocol,
        description="The new-item protocol: newest items held out of training.",
    )
