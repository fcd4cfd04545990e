"""Bandit environments: the synthetic world's ground truth, a semi-synthetic click model fit
on a real rating log, and uniformly logged data for offline replay (Li et al. 2011).

A request is a sampled user with ``num_candidates`` candidates. Candidate scores are the
true click logits plus Gaussian noise (an imperfect ranker); the reward of a shown item is
Bernoulli(true click probability), independent of its slot. Features for the contextual
policies are ``features.contextual_features`` of the user's and items' latent factors (the
model's representation here is the world's own); diversity uses the item factors. Worlds with
items released during the horizon are in ``arrivals.py``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rayrec.data.world import SyntheticWorld, saved_world
from rayrec.explore.features import contextual_features


@dataclass
class Request:
    user_idx: int
    arms: np.ndarray  # (n,) item idx of the candidates
    scores: np.ndarray  # (n,) noisy logits
    features: np.ndarray  # (n, 2 D + 1) contextual_features of the user and the candidates
    embeddings: np.ndarray  # (n, d) item vectors (diversity)
    probs: np.ndarray  # (n,) true click probabilities
    is_new: np.ndarray | None = None  # (n,) bool: released during the horizon (arrivals worlds)


class WorldEnv:
    """Requests and Bernoulli rewards from a ``SyntheticWorld`` (synthetic or fitted)."""

    def __init__(
        self, world: SyntheticWorld, num_candidates: int, candidates: str = "noisy_top",
        score_noise: float = 1.0, name: str = "synthetic", features: dict | None = None,
    ):
        if candidates not in ("noisy_top", "random"):
            raise ValueError(f"candidates must be noisy_top or random, got {candidates!r}")
        self.world, self.name = world, name
        self.num_candidates = min(int(num_candidates), world.n_items)
        self.candidates, self.score_noise = candidates, float(score_noise)
        self.features = dict(features or {})  # contextual_features' dim and scales
        # expected number of clicking users per item: the popularity used for novelty
        u = world.user_factors.astype(np.float64)
        logits = world.scale * u @ world.item_factors.T.astype(np.float64) + world.item_bias + world.offset
        self.item_popularity = (1.0 / (1.0 + np.exp(-logits))).sum(axis=0)

    def request(self, rng: np.random.Generator, t: int = 0) -> Request:
        """The request of round ``t`` (a static world ignores it)."""
        w = self.world
        user = int(rng.integers(w.n_users))
        probs_all = w.user_probabilities(user)
        if self.candidates == "random":
            arms = np.sort(rng.choice(w.n_items, self.num_candidates, replace=False))
            probs = probs_all[arms]
            scores = _logit(probs) + self.score_noise * rng.standard_normal(len(arms))
        else:
            noisy = _logit(probs_all) + self.score_noise * rng.standard_normal(w.n_items)
            arms = np.argsort(-noisy, kind="stable")[: self.num_candidates]
            probs, scores = probs_all[arms], noisy[arms]
        emb = w.item_factors[arms].astype(np.float64)
        feats = contextual_features(emb, w.user_factors[user], **self.features)
        return Request(user, arms.astype(np.int64), scores, feats, emb, probs)

    @staticmethod
    def rewards(req: Request, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (rng.random(len(indices)) < req.probs[indices]).astype(np.float64)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def load_or_generate_world(cfg) -> SyntheticWorld:
    """The preprocessed world under ``<data_dir>/world`` when present, else a generated one."""
    return saved_world(cfg.data_dir) or SyntheticWorld.generate(cfg.data.synthetic)


# ---- semi-synthetic: a click model fit on a real rating log ----------------------------------

_BIAS_COORD = 0.01

def fit_click_model(
    ratings_path: str | Path, n_items: int = 600, dim: int = 16, like_threshold: float = 4.0,
    steps: int = 300, l2: float = 5e-5, lr: float = 0.05, seed: int = 0,
) -> tuple[SyntheticWorld, dict]:
    """Fit a logistic matrix factorisation click model on a MovieLens-style ratings.csv.

    Click model: p(click | u, i) = sigmoid(z_ui), z_ui = b0 + b_u + b_i + <P_u, Q_i>, fit by
    full-batch Adam (torch, float64) on the mean log-loss with an L2 penalty on the factors:

        L = -1/n sum_(u,i,y) [y log sigmoid(z_ui) + (1 - y) log(1 - sigmoid(z_ui))]
            + l2/2 (||P||^2 + ||Q||^2)

    Labels: rated and rating >= like_threshold -> 1, rated below it -> 0, and as many
    sampled unrated (user, item) pairs -> 0 (not watched = not clicked); 10% held out for
    the reported held-out log-loss. Kept: the ``n_items`` most-rated items and the users who
    rated any of them. Returned as a SyntheticWorld (user = [P_u, b_u / c], item = [Q_i, c],
    item_bias = b_i, offset = b0, scale = 1, c = 0.01) so the same environment code runs on it.
    """
    import torch  # only the MovieLens click model needs it; the policies are numpy

    path = Path(ratings_path)
    if not path.is_file():
        raise FileNotFoundError(f"ratings file not found: {path}")
    df = pd.read_csv(path)
    missing = {"userId", "movieId", "rating"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    df = df.dropna(subset=["userId", "movieId", "rating"])
    top = df["movieId"].value_counts().index[:n_items]
    df = df[df["movieId"].isin(top)]
    users = np.sort(df["userId"].unique())
    items = np.asarray(top)
    u = np.searchsorted(users, df["userId"].to_numpy())
    i = pd.Index(items).get_indexer(df["movieId"].to_numpy())
    y = (df["rating"].to_numpy() >= like_threshold).astype(np.float64)
    rng = np.random.default_rng(seed)
    rated = set(zip(u.tolist(), i.tolist(), strict=True))
    nu, ni = rng.integers(len(users), size=3 * len(u)), rng.integers(len(items), size=3 * len(u))
    keep = np.array([(a, b) not in rated for a, b in zip(nu.tolist(), ni.tolist(), strict=True)], dtype=bool)
    nu, ni = nu[keep][: len(u)], ni[keep][: len(u)]
    U, I_ = np.concatenate([u, nu]), np.concatenate([i, ni])
    Y = np.concatenate([y, np.zeros(len(nu))])
    held = rng.random(len(Y)) < 0.1  # held-out 10%: reported, not trained on

    f64 = torch.float64
    train = [torch.as_tensor(a[~held]) for a in (U, I_, Y)]
    valid = [torch.as_tensor(a[held]) for a in (U, I_, Y)]
    P = torch.as_tensor(0.1 * rng.standard_normal((len(users), dim)), dtype=f64).requires_grad_()
    Q = torch.as_tensor(0.1 * rng.standard_normal((len(items), dim)), dtype=f64).requires_grad_()
    bu, bi, b0 = (torch.zeros(k, dtype=f64, requires_grad=True) for k in (len(users), len(items), 1))

    def logloss(u_: torch.Tensor, i_: torch.Tensor, y_: torch.Tensor) -> torch.Tensor:
        z = b0 + bu[u_] + bi[i_] + (P[u_] * Q[i_]).sum(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(z, y_)

    opt = torch.optim.Adam([P, Q, bu, bi, b0], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops of n x dim: more threads only add synchronisation
    try:
        for _ in range(steps):
            opt.zero_grad()
            loss = logloss(*train) + 0.5 * l2 * (P.square().sum() + Q.square().sum())
            loss.backward()
            opt.step()
        with torch.no_grad():
            train_logloss, heldout_logloss = float(logloss(*train)), float(logloss(*valid))
    finally:
        torch.set_num_threads(threads)
    P, Q, bu, bi, b0 = (x.detach().numpy() for x in (P, Q, bu, bi, b0))

    cats, titles = _movie_meta(path.parent / "movies.csv", items)
    names = sorted(set(cats))
    c = _BIAS_COORD  # small, so item-item cosine (diversity) is driven by Q, not the constant
    world = SyntheticWorld(
        user_factors=np.hstack([P, bu[:, None] / c]).astype(np.float32),
        item_factors=np.hstack([Q, np.full((len(items), 1), c)]).astype(np.float32),
        item_bias=bi.astype(np.float32),
        item_category=np.array([names.index(c) for c in cats], dtype=np.int64),
        category_names=names, titles=titles, scale=1.0, offset=float(b0[0]),
    )
    info = {
        "click_model": "p = sigmoid(b0 + b_u + b_i + <P_u, Q_i>), logistic MF (torch, Adam)",
        "labels": f"rating >= {like_threshold} -> 1, rated below -> 0, sampled unrated -> 0",
        "n_users": len(users), "n_items": len(items), "dim": dim, "n_train": int((~held).sum()),
        "train_logloss": train_logloss, "heldout_logloss": heldout_logloss,
        "positive_rate": float(Y[~held].mean()), "l2": l2, "steps": steps,
        "item_ids": items.tolist(),  # the movieIds of the world's items, in order
    }
    return world, info


def _movie_meta(movies_csv: Path, items: np.ndarray) -> tuple[list[str], list[str]]:
    if not movies_csv.is_file():
        return ["unknown"] * len(items), [f"item {m}" for m in items]
    movies = pd.read_csv(movies_csv).set_index("movieId")
    genres = movies["genres"].reindex(items).fillna("unknown").astype(str)
    titles = movies["title"].reindex(items).fillna("").astype(str)
    return [g.split("|")[0] for g in genres], list(titles)


# ---- uniformly logged data and unbiased offline replay ---------------------------------------

def uniform_log(env: WorldEnv, n_events: int, seed: int = 0) -> pd.DataFrame:
    """Log ``n_events`` single-slot impressions chosen uniformly among each request's candidates.

    Columns: request_id, user_idx, candidates (item idx list), scores, features, embeddings,
    position_in_candidates, item_idx, propensity (1 / n_candidates), reward.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_events):
        req = env.request(rng)
        j = int(rng.integers(len(req.arms)))
        rows.append({
            "request_id": uuid.UUID(int=int(rng.integers(2**63))).hex, "user_idx": req.user_idx,
            "candidates": req.arms, "scores": req.scores, "features": req.features,
            "embeddings": req.embeddings, "position_in_candidates": j,
            "item_idx": int(req.arms[j]), "propensity": 1.0 / len(req.arms),
            "reward": float(rng.random() < req.probs[j]), "true_prob": float(req.probs[j]),
        })
    return pd.DataFrame(rows)


def replay(policy, log: pd.DataFrame, max_matches: int | None = None) -> dict:
    """Unbiased offline replay (Li et al. 2011) of a (learning) policy on a uniform log.

    Each logged event is offered to the policy; when it picks the logged item, the reward
    counts and the policy learns from it, otherwise the event is skipped.
    """
    rewards, shown = [], []
    for row in log.itertuples(index=False):
        slate = policy.select(row.scores, 1, row.features, arms=row.candidates, embeddings=row.embeddings)
        if int(slate.indices[0]) != row.position_in_candidates:
            continue
        j = row.position_in_candidates
        policy.update(row.candidates[[j]], np.array([row.reward]), row.features[[j]], row.scores[[j]])
        rewards.append(row.reward)
        shown.append(int(row.item_idx))
        if max_matches is not None and len(rewards) >= max_matches:
            break
    r = np.asarray(rewards)
    return {"matches": len(r), "events": len(log), "ctr": float(r.mean()) if len(r) else float("nan"),
            "rewards": r, "shown": shown}
