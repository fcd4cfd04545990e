"""Worlds with arrivals: items released during the horizon, known to the model by text alone.

The value of exploration shows where the model is unsure, and a static world has no such
place (a RecSys'25 study: on static logs greedy matches LinUCB/LinTS most of the time). Here
a share ``arrival_fraction`` of the catalog is released at a constant rate over the first
``arrival_window`` of the horizon (a launch season; synthetic: a random share; MovieLens-derived:
the items first rated last, in that order), so the rest of the horizon shows what each policy
learned about them.

What the model knows (the "ranker" whose scores the policies see):

- an item with interactions: its taste vector v_i and bias b_i (an ID model learned them);
  score = true logit + score_noise * eps (per request);
- a new item: a text vector t_i = v_i + text_noise * |v| / sqrt(d) * eps_i (fixed per item:
  text says most but not all of the taste), no bias of its own (the catalog's mean bias), and
  ``new_item_gap`` logits less: an ID model scores an item it never saw below the ones it
  learned (no popularity, no tuned vector). score = scale <u, t_i> + mean(b) + offset - gap + noise.

Candidates come from a retrieval stage that does see new items (the text tower): the top
``num_candidates`` released items by true logit + score_noise * eps. Rewards are Bernoulli on
the true click probability. So a policy that trusts the scores under-serves new items; one
that learns what the text-only block of its features is worth (``features.py``) recovers
them and carries what it learned to the next arrival.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayrec.data.world import SyntheticWorld
from rayrec.explore.environments import Request, WorldEnv, _logit
from rayrec.explore.features import contextual_features


class ArrivalsEnv(WorldEnv):
    """A :class:`WorldEnv` whose newest items are released during ``horizon`` rounds."""

    def __init__(
        self, world: SyntheticWorld, num_candidates: int, horizon: int, arrival_fraction: float = 0.3,
        release_order: np.ndarray | None = None, new_item_gap: float = 2.0, text_noise: float = 0.3,
        score_noise: float = 0.3, name: str = "arrivals", features: dict | None = None, new_item_age: int = 0,
        seed: int = 0, arrival_window: float = 0.5,
    ):
        super().__init__(world, num_candidates, "noisy_top", score_noise, name, features)
        n = world.n_items
        rng = np.random.default_rng([seed, 7])
        order = rng.permutation(n) if release_order is None else np.asarray(release_order, np.int64)
        if sorted(order.tolist()) != list(range(n)):
            raise ValueError("release_order must be a permutation of the items")
        n_new = int(round(arrival_fraction * n))
        self.release = np.zeros(n, np.int64)  # round from which an item is in the catalog
        newest = order[n - n_new:] if n_new else np.zeros(0, np.int64)
        self.release[newest] = np.floor(np.arange(n_new) * arrival_window * horizon / max(n_new, 1)).astype(np.int64)
        self.arriving = np.zeros(n, bool)
        self.arriving[newest] = True
        self.horizon, self.gap, self.new_item_age = int(horizon), float(new_item_gap), int(new_item_age)
        v = world.item_factors.astype(np.float64)
        noise = rng.standard_normal(v.shape) * np.linalg.norm(v, axis=1, keepdims=True) / np.sqrt(v.shape[1])
        self.model_vectors = np.where(self.arriving[:, None], v + text_noise * noise, v)
        self.mean_bias = float(world.item_bias[~self.arriving].mean()) if (~self.arriving).any() else 0.0

    def is_new(self, items: np.ndarray, t: int) -> np.ndarray:
        """Released during the horizon (and, with ``new_item_age``, fewer rounds ago than that)."""
        new = self.arriving[items]
        if self.new_item_age:
            new &= t - self.release[items] < self.new_item_age
        return new

    def request(self, rng: np.random.Generator, t: int = 0) -> Request:
        w = self.world
        user = int(rng.integers(w.n_users))
        probs_all = w.user_probabilities(user)
        released = np.flatnonzero(self.release <= t)
        noisy = _logit(probs_all[released]) + self.score_noise * rng.standard_normal(len(released))
        arms = released[np.argsort(-noisy, kind="stable")[: self.num_candidates]]
        u = w.user_factors[user].astype(np.float64)
        vecs = self.model_vectors[arms]
        new = self.is_new(arms, t)
        known = _logit(probs_all[arms])
        text_only = w.scale * vecs @ u + self.mean_bias + w.offset - self.gap
        scores = np.where(self.arriving[arms], text_only, known) + self.score_noise * rng.standard_normal(len(arms))
        feats = contextual_features(vecs, u, new, **self.features)
        return Request(user, arms.astype(np.int64), scores, feats, vecs, probs_all[arms], new)


def movielens_release_order(ratings_csv, item_ids: np.ndarray) -> np.ndarray:
    """Item positions (into ``item_ids``) from the first rated to the last (by first rating)."""
    df = pd.read_csv(ratings_csv, usecols=["movieId", "timestamp"])
    first = df.groupby("movieId")["timestamp"].min().reindex(item_ids)
    return np.argsort(first.to_numpy(dtype=np.float64), kind="stable")
