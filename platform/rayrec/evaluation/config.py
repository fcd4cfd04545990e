"""Config section for offline evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrec.configbase import Section


class GenerativeEval(Section):
    """The generator as a system of the full-catalog evaluation (rayrec.generative): a causal LM
    names items through the catalog trie, seen items banned. Off by default: ~3 s per user for
    SmolLM2-135M on 2 CPU cores, so cap the users (evaluate.max_users) on a laptop."""

    enabled: bool = False
    backbone: str = "smollm2-135m"
    # None = zero-shot; "tuned" = the run's <generator_dir>/adapter (`rayrec train-generator`);
    # else a peft LoRA adapter directory or URI.
    adapter: str | None = None
    k: int = Field(10, ge=1)  # items generated per user (metrics beyond k count them as misses)
    beams: int = Field(10, ge=1)  # beam width (at least k is used)
    history_items: int = Field(10, ge=1)  # newest titles in the prompt (tuned: as generator.history_items)


class NewItemProtocol(Section):
    """The new-item protocol (rayrec.data.newitems, `rayrec new-items`): the newest items held
    out of every training stage, each user's first contact with one as the target."""

    enabled: bool = False  # `rayrec main` runs it after the warm evaluation
    fraction: float = Field(0.15, gt=0, lt=1)  # of the items with a positive, newest by first positive
    min_history: int = Field(2, ge=1)  # positives a user needs before the target to be evaluated
    tower: bool = True  # also LoRA-tune the item tower (rayrec.itemtower) and evaluate it
    ranker: bool = True  # also train the ranker on the protocol's data; every retriever + it is evaluated
    max_minutes: float | None = Field(None, gt=0)  # each protocol retriever's budget (None: retriever.max_minutes)


class EvalConfig(Section):
    """Which split, which candidates, which metrics."""

    split: Literal["valid", "test"] = "test"
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20])
    # full: every system's top-K over the whole catalog minus what the user has seen (the
    # headline); sampled / retrieval / popularity: re-ranking a fixed candidate set (diagnostics).
    candidates: Literal["full", "sampled", "retrieval", "popularity"] = "full"
    num_candidates: int = Field(100, ge=2)  # re-ranking diagnostics: candidates per user
    rank_depth: int = Field(20, ge=1)  # full: the retriever's top-N that the ranker re-scores
    rank_retrieved: bool = True  # full: evaluate retriever + ranker when a ranker checkpoint exists
    baselines: bool = True  # full: popularity, ALS and text retrieval beside the system
    max_users: int | None = Field(None, ge=1)
    checkpoint: str | None = None  # default: the training run's best (else latest) checkpoint
    require_checkpoint: bool = True  # False: evaluate the untuned ranker when none is found
    scoring: Literal["auto", "ray", "local"] = "auto"  # auto: Ray Data above local_max_users
    local_max_users: int = Field(64, ge=0)
    scoring_actors: int = Field(1, ge=1)
    scoring_cpus: float = Field(1.0, gt=0)  # CPUs per scoring actor (Ray sets its torch threads)
    score_batch_size: int = Field(16, ge=1)  # users per Ray Data batch
    beyond_k: int = Field(10, ge=1)  # list length for diversity, coverage and novelty
    bootstrap: int = Field(1000, ge=0)  # resamples for paired confidence intervals
    seed: int = 0  # user sample, bootstrap (and the trained baselines unless system_seed)
    # full: retrain and evaluate every trained system under this many seeds (rayrec.seeds):
    # per-seed figures, mean ± sd, each seed's paired CIs (1 in the demo, 3 for reference runs)
    seeds: int = Field(1, ge=1)
    system_seed: int | None = None  # seed of the trained baselines (ALS); None: evaluate.seed
    out: str | None = None  # default: <run_dir>/eval
    generative: GenerativeEval = Field(default_factory=GenerativeEval)
    new_items: NewItemProtocol = Field(default_factory=NewItemProtocol)
