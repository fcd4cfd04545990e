"""The ranker inside evaluation: which checkpoint is evaluated, and the one scoring path that
fills a list of :class:`EvalCase` with the ranker's scores, on Ray Data actors or in process.

Both protocols use it: the full catalog (the retriever's top-N re-scored,
:mod:`rayrec.evaluation.fullcatalog`) and the re-ranking diagnostics (fixed candidate sets,
:mod:`rayrec.evaluation.sampled`). The scores come from ``Ranker.score``, the same call the
ranking deployment makes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from rayrec.checkpoints import served_checkpoint
from rayrec.models.config import ModelConfig
from rayrec.models.prior import ranker_priors
from rayrec.models.ranker import load_ranker
from rayrec.runtime import init_ray, require_resources

log = logging.getLogger(__name__)

TEXT_ONLY = "ranker_text_only"  # ablation: the same ranker's scores without its popularity prior


@dataclass
class EvalCase:
    """One user's evaluation list: candidates in arrival order and the held-out positive."""

    user_idx: int
    history: list[int]
    history_text: str
    candidates: np.ndarray
    positive: int
    retrieved: bool = True  # False when the positive was inserted into a retrieved list
    retrieval_scores: np.ndarray | None = None  # the retriever's log-lift per candidate
    scores: dict[str, np.ndarray] = field(default_factory=dict)


def resolve_checkpoint(cfg, required: bool | None = None) -> str | None:
    """evaluate.checkpoint, else what the run serves (rayrec.checkpoints.served_checkpoint: the
    feedback loop's promotion, else the training run's best, else the latest; None when there is
    none and it is not required)."""
    if cfg.evaluate.checkpoint:
        if not Path(cfg.evaluate.checkpoint).exists() and "://" not in cfg.evaluate.checkpoint:
            raise FileNotFoundError(f"evaluate.checkpoint {cfg.evaluate.checkpoint} does not exist")
        return cfg.evaluate.checkpoint
    ckpt, how = served_checkpoint(cfg)
    log.info("evaluating ranker %s (%s)", ckpt, how)
    required = cfg.evaluate.require_checkpoint if required is None else required
    if ckpt is None and required:
        raise FileNotFoundError(
            f"no checkpoint under {cfg.checkpoint_dir}; train first, set evaluate.checkpoint, or set "
            "evaluate.require_checkpoint=false to evaluate the untuned ranker"
        )
    return ckpt


class RankerScorer:
    """Ray Data actor holding one ranker: scores a batch of (history_text, candidate_texts) rows."""

    def __init__(self, model_cfg: dict, checkpoint: str | None) -> None:
        self.ranker = load_ranker(ModelConfig.model_validate(model_cfg), checkpoint, "cpu")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        priors = ([_prior_matrix(p) for p in batch["candidate_priors"]]
                  if "candidate_priors" in batch else None)
        scores = self.ranker.score(
            [str(h) for h in batch["history_text"]], [[str(t) for t in c] for c in batch["candidate_texts"]],
            priors,
        )
        out = pd.DataFrame({"case": batch["case"].to_numpy(), "scores": [np.asarray(s).tolist() for s in scores]})
        weights = self.ranker.prior_weights
        if priors is not None and weights is not None:
            out["text_scores"] = [(np.asarray(s) - p @ weights).tolist() for s, p in zip(scores, priors, strict=True)]
        return out


def _prior_matrix(rows) -> np.ndarray:
    """One list's priors as (n, F) float32, whether they arrive as lists or nested arrays."""
    return np.stack([np.atleast_1d(np.asarray(r, dtype=np.float32)) for r in rows]).reshape(len(rows), -1)


def scoring_on_ray(cfg, n_cases: int) -> bool:
    """Whether ranker scoring runs on Ray Data actors (``evaluate.scoring``: ray, or auto above
    ``local_max_users``); if so, connect to Ray and fail at once when the actors can never all
    start (Ray Data would otherwise wait for them without a word)."""
    ec = cfg.evaluate
    if not (ec.scoring == "ray" or (ec.scoring == "auto" and n_cases > ec.local_max_users)):
        return False
    init_ray(cfg.ray)
    require_resources(
        {"CPU": ec.scoring_actors * ec.scoring_cpus},
        f"ranker scoring (evaluate.scoring_actors={ec.scoring_actors} x evaluate.scoring_cpus={ec.scoring_cpus})",
        hint="Lower evaluate.scoring_actors or evaluate.scoring_cpus, set evaluate.scoring=local, or add "
        "capacity (more nodes, `ray start --num-cpus N`).")
    return True


def score_cases(cfg, cases: list[EvalCase], item_texts: np.ndarray, checkpoint: str | None,
                item_prior: np.ndarray | None = None) -> str:
    """Fill ``case.scores['ranker']`` (and, when the ranker reads priors, the text-only ablation
    ``case.scores[TEXT_ONLY]``) with ``cfg.model``'s ranker at ``checkpoint``: on Ray Data actors
    (``evaluate.scoring_actors`` x ``scoring_cpus``) or in process, as :func:`scoring_on_ray` decides. Returns where it scored, in words."""
    ec, model_cfg = cfg.evaluate, cfg.model
    batch_size, actors = ec.score_batch_size, ec.scoring_actors
    frame = pd.DataFrame({
        "case": np.arange(len(cases)),
        "history_text": [c.history_text for c in cases],
        "candidate_texts": [item_texts[c.candidates].tolist() for c in cases],
    })
    priors = ranker_priors(model_cfg, item_prior, [c.candidates for c in cases],
                           [c.retrieval_scores for c in cases])
    if priors is not None:
        frame["candidate_priors"] = [p.tolist() for p in priors]
    if scoring_on_ray(cfg, len(cases)):
        where = f"Ray Data map_batches, {actors} actor(s) x {ec.scoring_cpus} CPU"
        n_blocks = max(1, min(len(frame), actors * 4, int(np.ceil(len(frame) / batch_size))))
        blocks = [frame.iloc[ix] for ix in np.array_split(np.arange(len(frame)), n_blocks)]
        out = ray.data.from_pandas(blocks).map_batches(
            RankerScorer,
            fn_constructor_kwargs={"model_cfg": model_cfg.model_dump(), "checkpoint": checkpoint},
            batch_size=batch_size, batch_format="pandas", num_cpus=ec.scoring_cpus,
            compute=ray.data.ActorPoolStrategy(size=actors),
        ).to_pandas()
    else:
        where = "in-process"
        scorer = RankerScorer(model_cfg.model_dump(), checkpoint)
        out = pd.concat([scorer(frame.iloc[s : s + batch_size]) for s in range(0, len(frame), batch_size)])
    columns = {"ranker": "scores"} | ({TEXT_ONLY: "text_scores"} if "text_scores" in out else {})
    for model, column in columns.items():
        by_case = dict(zip(out["case"].tolist(), out[column], strict=True))
        for i, c in enumerate(cases):
            s = np.asarray(by_case[i], dtype=np.float64)
            if s.shape != (len(c.candidates),) or not np.isfinite(s).all():
                raise RuntimeError(f"ranker returned bad scores for user {c.user_idx}: shape {s.shape}")
            c.scores[model] = s
    return where
