"""Offline evaluation: the ranker and two baselines re-rank the same candidates for the same users.

Protocol, per user of the held-out split (one example per user, the earliest):
  candidates  'sampled':    the held-out positive + the split's sampled negatives (examples/<split>),
                            shuffled deterministically (the stored order has the positive first);
              'retrieval':  the item index's top-N for the user's history (history items excluded),
                            the held-out item replacing the last one when retrieval missed it;
              'popularity': the N most popular unseen items, the held-out item inserted likewise.
  models      ranker (LoRA checkpoint, scored through Ray Data actors or in-process),
              popularity (train positives), candidate_order (the order candidates arrive in).
  metrics     HR@K, NDCG@K, MRR, AUC per user (ties broken against the held-out item), averaged;
              intra-list diversity, catalog coverage and novelty of each model's top-K.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayrec.evaluation import metrics as M
from rayrec.evaluation.baselines import candidate_order_scores, popularity_scores, popularity_top
from rayrec.evaluation.bootstrap import bootstrap, percentile_interval
from rayrec.models.prior import popularity_prior, ranker_priors

log = logging.getLogger(__name__)

MODELS = ("ranker", "popularity", "candidate_order")
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


# ---------------------------------------------------------------- data access


def load_eval_frames(data_dir: str, split: str) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Items (sorted by item_idx), the split's examples, and the number of users."""
    from rayrec.data import store

    items = store.load_items(data_dir)
    examples = store.read_pandas(data_dir, "examples", split)
    n_users = len(store.load_users(data_dir))
    if len(examples) == 0:
        raise ValueError(f"no examples in split {split!r} under {data_dir}")
    idx = items["item_idx"].to_numpy()
    if not np.array_equal(idx, np.arange(len(items))):
        raise ValueError("items.parquet item_idx must be dense 0..n-1 (see rayrec.data.schema)")
    return items, examples, n_users


def select_users(examples: pd.DataFrame, max_users: int | None, seed: int) -> pd.DataFrame:
    """One example per user (the earliest held-out one); a seeded sample of max_users users."""
    ex = examples.sort_values(["user_idx", "timestamp"], kind="stable").drop_duplicates("user_idx")
    if max_users is not None and len(ex) > max_users:
        keep = np.random.default_rng(seed).choice(len(ex), size=max_users, replace=False)
        ex = ex.iloc[np.sort(keep)]
    return ex.reset_index(drop=True)


# ---------------------------------------------------------------- candidate generation


def sampled_cases(rows: pd.DataFrame, num_candidates: int, seed: int) -> list[EvalCase]:
    """Positive + stored negatives (first num_candidates), shuffled with a per-user seed."""
    cases = []
    for r in rows.itertuples(index=False):
        cands = np.asarray(r.candidates, dtype=np.int64)[:num_candidates]
        labels = np.asarray(r.labels, dtype=np.float64)[: len(cands)]
        if len(cands) < 2 or labels[0] <= 0 or (labels[1:] > 0).any():
            raise ValueError(f"user {r.user_idx}: examples must hold the positive first, then negatives")
        perm = np.random.default_rng([seed, int(r.user_idx)]).permutation(len(cands))
        cases.append(EvalCase(int(r.user_idx), list(map(int, r.history)), str(r.history_text),
                              cands[perm], int(cands[0])))
    return cases


def _insert_positive(ranked: list[int], positive: int, n: int) -> tuple[np.ndarray, bool]:
    if positive in ranked[:n]:
        return np.asarray(ranked[:n], dtype=np.int64), True
    return np.asarray(ranked[: n - 1] + [positive], dtype=np.int64), False


def retrieval_cases(rows: pd.DataFrame, index, num_candidates: int, recency_decay: float) -> list[EvalCase]:
    """The index's top-N for each user's history; the held-out item appended if it was missed."""
    from rayrec.retrieval.query import history_query

    cases = []
    for r in rows.itertuples(index=False):
        history, positive = list(map(int, r.history)), int(r.candidates[0])
        try:
            q = history_query(index, history, recency_decay)
            hits = [i for i, _ in index.search(q, num_candidates, exclude=set(history) - {positive})]
        except ValueError:  # empty history: nothing to query with
            hits = []
        cands, found = _insert_positive(hits, positive, num_candidates)
        cases.append(EvalCase(int(r.user_idx), history, str(r.history_text), cands, positive, found))
    return cases


def popularity_cases(rows: pd.DataFrame, popularity: np.ndarray, num_candidates: int) -> list[EvalCase]:
    """The N most popular items the user has not seen; the held-out item appended if missing."""
    cases = []
    for r in rows.itertuples(index=False):
        history, positive = list(map(int, r.history)), int(r.candidates[0])
        top = popularity_top(popularity, num_candidates, exclude=set(history) - {positive}).tolist()
        cands, found = _insert_positive(top, positive, num_candidates)
        cases.append(EvalCase(int(r.user_idx), history, str(r.history_text), cands, positive, found))
    return cases


# ---------------------------------------------------------------- ranker scoring


class RankerScorer:
    """Ray Data actor holding one ranker: scores a batch of (history_text, candidate_texts) rows."""

    def __init__(self, model_cfg: dict, checkpoint: str | None) -> None:
        from rayrec.models.config import ModelConfig
        from rayrec.models.ranker import load_ranker

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
    from rayrec.runtime import init_ray, require_resources

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


def score_cases_with_ranker(
    cases: list[EvalCase], item_texts: np.ndarray, model_cfg, checkpoint: str | None,
    use_ray: bool, actors: int = 1, batch_size: int = 16, cpus_per_actor: float = 1.0,
    item_prior: np.ndarray | None = None,
) -> None:
    """Fill ``case.scores['ranker']`` (and, when the ranker reads priors, the text-only ablation
    ``case.scores[TEXT_ONLY]``) via Ray Data actors (use_ray) or one in-process ranker."""
    frame = pd.DataFrame({
        "case": np.arange(len(cases)),
        "history_text": [c.history_text for c in cases],
        "candidate_texts": [item_texts[c.candidates].tolist() for c in cases],
    })
    priors = ranker_priors(model_cfg, item_prior, [c.candidates for c in cases],
                           [c.retrieval_scores for c in cases])
    if priors is not None:
        frame["candidate_priors"] = [p.tolist() for p in priors]
    if use_ray:
        import ray

        n_blocks = max(1, min(len(frame), actors * 4, int(np.ceil(len(frame) / batch_size))))
        blocks = [frame.iloc[ix] for ix in np.array_split(np.arange(len(frame)), n_blocks)]
        out = ray.data.from_pandas(blocks).map_batches(
            RankerScorer,
            fn_constructor_kwargs={"model_cfg": model_cfg.model_dump(), "checkpoint": checkpoint},
            batch_size=batch_size, batch_format="pandas", num_cpus=cpus_per_actor,
            compute=ray.data.ActorPoolStrategy(size=actors),
        ).to_pandas()
    else:
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


# ---------------------------------------------------------------- metrics


def rank_list(candidates: np.ndarray, scores: np.ndarray, positive: int) -> np.ndarray:
    """Candidates best first; among equal scores the held-out positive goes last (pessimistic)."""
    is_pos = (np.asarray(candidates) == positive).astype(np.int64)
    return np.asarray(candidates)[np.lexsort((is_pos, -np.asarray(scores, dtype=np.float64)))]


def per_user_metrics(
    candidates: np.ndarray, scores: np.ndarray, positive: int, ks: list[int]
) -> dict[str, float]:
    """HR@K, NDCG@K, MRR, AUC and the 0-based rank of the positive for one user's list."""
    ranked = rank_list(candidates, scores, positive)
    labels = (np.asarray(candidates) == positive).astype(np.float64)
    row: dict[str, float] = {"rank": float(np.flatnonzero(ranked == positive)[0])}
    for k in ks:
        row[f"hr@{k}"] = M.hit_rate_at_k(ranked, positive, k)
        row[f"ndcg@{k}"] = M.ndcg_at_k(ranked, positive, k)
    row["mrr"] = M.reciprocal_rank(ranked, positive)
    row["auc"] = M.auc(scores, labels)
    return row


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    """Mean of a - b over users with a percentile 95% CI (users resampled with replacement)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    out = {"delta": float(d.mean()), "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}
    if n_boot > 0 and len(d) > 1:
        means = bootstrap(lambda c: float(c @ d) / len(d), len(d), n_boot, seed)  # sum(c) = n
        out["ci95"] = list(percentile_interval(means))
    return out


def beyond_accuracy(
    top_lists: list[np.ndarray], embeddings_of, popularity: np.ndarray, n_items: int, n_users: int
) -> dict[str, float]:
    """Mean intra-list diversity and novelty of the lists, and their catalog coverage."""
    return {
        "ild": float(np.mean([M.intra_list_diversity(embeddings_of(t)) for t in top_lists])),
        "coverage": M.catalog_coverage(top_lists, n_items),
        "novelty": float(np.mean([M.novelty(t, popularity, n_users) for t in top_lists])),
    }


# ---------------------------------------------------------------- entry point


def resolve_checkpoint(cfg, required: bool | None = None) -> str | None:
    """evaluate.checkpoint, else what the run serves (rayrec.checkpoints.served_checkpoint: the
    feedback loop's promotion, else the training run's best, else the latest; None when there is
    none and it is not required)."""
    if cfg.evaluate.checkpoint:
        if not Path(cfg.evaluate.checkpoint).exists() and "://" not in cfg.evaluate.checkpoint:
            raise FileNotFoundError(f"evaluate.checkpoint {cfg.evaluate.checkpoint} does not exist")
        return cfg.evaluate.checkpoint
    from rayrec.checkpoints import served_checkpoint

    ckpt, how = served_checkpoint(cfg)
    log.info("evaluating ranker %s (%s)", ckpt, how)
    required = cfg.evaluate.require_checkpoint if required is None else required
    if ckpt is None and required:
        raise FileNotFoundError(
            f"no checkpoint under {cfg.checkpoint_dir}; train first, set evaluate.checkpoint, or set "
            "evaluate.require_checkpoint=false to evaluate the untuned ranker"
        )
    return ckpt


def _embedding_lookup(cfg, items: pd.DataFrame, needed: np.ndarray):
    """Item embeddings for diversity: from the saved index when present, else encode what is needed."""
    from rayrec.retrieval.index import ItemIndex

    encoder = cfg.retrieval.encoder or cfg.model.backbone
    try:
        index = ItemIndex.load(cfg.index_dir)
    except FileNotFoundError:
        index = None
    if index is not None and all(index.has(int(i)) for i in needed):
        return index.embeddings_for, f"item index at {cfg.index_dir} ({index.meta.get('encoder')})"
    from rayrec.retrieval.encoder import TextEncoder

    emb = TextEncoder(encoder).encode(items["text"].to_numpy()[needed].tolist())
    row = {int(i): r for r, i in enumerate(needed)}
    return (lambda ids: emb[[row[int(i)] for i in ids]]), f"TextEncoder({encoder}) on the listed items"


def run_evaluation(cfg) -> dict[str, Any]:
    """Evaluate on the held-out split and write the report: the full-catalog protocol
    (``evaluate.candidates: full``, :mod:`rayrec.evaluation.fullcatalog`) or the re-ranking
    diagnostics below (ranker vs popularity vs candidate order on a fixed candidate set)."""
    if cfg.evaluate.candidates == "full":
        from rayrec.evaluation.fullcatalog import run_full_catalog

        return run_full_catalog(cfg)
    from rayrec.evaluation.report import track_evaluation, write_report

    t0 = time.time()
    ec = cfg.evaluate
    ks = sorted(set(ec.ks))
    items, examples, n_users = load_eval_frames(cfg.data_dir, ec.split)
    rows = select_users(examples, ec.max_users, ec.seed)
    popularity = items["popularity"].to_numpy(dtype=np.float64)
    item_texts = items["text"].astype(str).to_numpy()
    checkpoint = resolve_checkpoint(cfg)

    if ec.candidates == "sampled":
        cases = sampled_cases(rows, ec.num_candidates, ec.seed)
        cand_desc = (
            "the held-out positive + the split's sampled negatives (items the user never interacted "
            "with), shuffled deterministically per user; candidate_order = that random order"
        )
    elif ec.candidates == "retrieval":
        from rayrec.retrieval.index import META_FILE, ItemIndex, build_index
        from rayrec.storage import is_file, join

        if not is_file(join(cfg.index_dir, META_FILE)):
            build_index(cfg)
        index = ItemIndex.load(cfg.index_dir)
        cases = retrieval_cases(rows, index, ec.num_candidates, cfg.retrieval.recency_decay)
        cand_desc = (
            f"retrieval top-{ec.num_candidates} from the item index ({index.meta.get('type')}, "
            f"{index.meta.get('encoder')}) for the recency-weighted history query, history items "
            "excluded; when retrieval missed the held-out item it replaces the last candidate; "
            "candidate_order = retrieval order"
        )
    else:
        cases = popularity_cases(rows, popularity, ec.num_candidates)
        cand_desc = (
            f"the {ec.num_candidates} most popular unseen items; when the held-out item is missing it "
            "replaces the last candidate; candidate_order = popularity order"
        )

    use_ray = scoring_on_ray(cfg, len(cases))
    t_score = time.time()
    item_prior = popularity_prior(popularity) if cfg.model.popularity_prior else None
    score_cases_with_ranker(cases, item_texts, cfg.model, checkpoint, use_ray,
                            ec.scoring_actors, ec.score_batch_size, ec.scoring_cpus, item_prior)
    score_seconds = time.time() - t_score
    models = MODELS + ((TEXT_ONLY,) if TEXT_ONLY in cases[0].scores else ())
    for c in cases:
        c.scores["popularity"] = popularity_scores(c.candidates, popularity)
        c.scores["candidate_order"] = candidate_order_scores(c.candidates)

    per_user = []
    top_lists: dict[str, list[np.ndarray]] = {m: [] for m in models}
    for c in cases:
        for m in models:
            row = per_user_metrics(c.candidates, c.scores[m], c.positive, ks)
            per_user.append({"user_idx": c.user_idx, "model": m, "n_candidates": len(c.candidates),
                             "retrieved": c.retrieved, **row})
            top_lists[m].append(rank_list(c.candidates, c.scores[m], c.positive)[: ec.beyond_k])
    per_user_df = pd.DataFrame(per_user)

    needed = np.unique(np.concatenate([t for m in models for t in top_lists[m]]))
    embeddings_of, emb_source = _embedding_lookup(cfg, items, needed)
    summary: dict[str, dict[str, float]] = {}
    for m in models:
        sub = per_user_df[per_user_df["model"] == m]
        metrics = {k: float(sub[k].mean()) for k in [f"{p}@{k}" for k in ks for p in ("hr", "ndcg")]}
        metrics["mrr"] = float(sub["mrr"].mean())
        metrics["auc"] = float(np.nanmean(sub["auc"])) if sub["auc"].notna().any() else float("nan")
        ba = beyond_accuracy(top_lists[m], embeddings_of, popularity, len(items), n_users)
        metrics.update({f"{k}@{ec.beyond_k}": v for k, v in ba.items()})
        summary[m] = metrics

    main_k = 10 if 10 in ks else ks[-1]
    comparisons = {}
    for base in ("popularity", "candidate_order"):
        a = per_user_df[per_user_df["model"] == "ranker"].sort_values("user_idx")[f"ndcg@{main_k}"]
        b = per_user_df[per_user_df["model"] == base].sort_values("user_idx")[f"ndcg@{main_k}"]
        comparisons[f"ranker_vs_{base}"] = {
            "metric": f"ndcg@{main_k}", **paired_bootstrap(a.to_numpy(), b.to_numpy(), ec.bootstrap, ec.seed)
        }

    n_cands = per_user_df[per_user_df["model"] == "ranker"]["n_candidates"]
    protocol = {
        "data_dir": cfg.data_dir,
        "split": ec.split,
        "users": len(cases),
        "users_in_split": int(examples["user_idx"].nunique()),
        "user_selection": ("all users of the split" if len(cases) == examples["user_idx"].nunique()
                           else f"seeded sample (seed {ec.seed}) of max_users={ec.max_users}"),
        "example_per_user": "the earliest held-out example of each user",
        "candidates": ec.candidates,
        "candidates_description": cand_desc,
        "candidates_per_user": {"min": int(n_cands.min()), "max": int(n_cands.max()),
                                "mean": float(n_cands.mean())},
        "negatives_per_user": float(n_cands.mean() - 1),
        "task": "re-ranking of the candidate set (not full-catalog ranking)",
        "ties": "broken against the held-out item (pessimistic)",
        "models": {
            "ranker": f"{cfg.model.kind} on {cfg.model.backbone}, checkpoint "
                      f"{checkpoint or 'NONE (untuned backbone + fresh LoRA)'}"
                      + (", text score + learned weight x popularity prior (rayrec.models.prior)"
                         if item_prior is not None else ""),
            "popularity": "positives per item in the train split (items.parquet popularity)",
            "candidate_order": "the order candidates arrive in (see candidates_description)",
            **({TEXT_ONLY: "ablation: the ranker's text score alone (its popularity prior removed)"}
               if TEXT_ONLY in models else {}),
        },
        "ranker_scoring": (f"Ray Data map_batches, {ec.scoring_actors} actor(s) x {ec.scoring_cpus} CPU"
                           if use_ray
                           else "in-process"),
        "ks": ks,
        "beyond_accuracy": (f"top-{ec.beyond_k} of each model; diversity = mean pairwise cosine "
                            f"distance of item embeddings from {emb_source}; coverage = distinct "
                            f"items / catalog size ({len(items)}); novelty = mean -log2(popularity / "
                            f"{n_users} users)"),
        "seed": ec.seed,
    }
    if ec.candidates != "sampled":
        protocol["positive_found_by_generator"] = float(np.mean([c.retrieved for c in cases]))
    result: dict[str, Any] = {
        "protocol": protocol,
        "models": summary,
        "comparisons": comparisons,
        "timing": {"total_seconds": round(time.time() - t0, 2), "ranker_seconds": round(score_seconds, 2)},
    }
    result["files"] = write_report(result, per_user_df, cfg.eval_dir)
    track_evaluation(cfg, result)
    return result
