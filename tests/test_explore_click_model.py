"""The semi-synthetic click model recovers a known logistic MF from the clicks it generated."""

from __future__ import annotations

import numpy as np
import pandas as pd
from rayrec.explore.environments import fit_click_model


def test_click_model_recovers_known_parameters(tmp_path):
    # truth: p(u, i) = sigmoid(b0 + b_u + b_i + P_u Q_i), one latent dimension; every user
    # rates every item (5 = click, 1 = no click), so no unrated pairs are sampled as negatives
    rng = np.random.default_rng(1)
    n_users, n_items = 400, 50
    P, Q = rng.normal(0, 1.0, n_users), rng.normal(0, 1.0, n_items)
    b_u, b_i, b0 = rng.normal(0, 0.3, n_users), rng.normal(0, 1.0, n_items), -0.5
    p = 1 / (1 + np.exp(-(b0 + b_u[:, None] + b_i[None, :] + np.outer(P, Q))))
    click = rng.random(p.shape) < p
    users, items = np.meshgrid(np.arange(n_users), np.arange(n_items), indexing="ij")
    pd.DataFrame({"userId": users.ravel() + 1, "movieId": items.ravel() + 1000,
                  "rating": np.where(click.ravel(), 5.0, 1.0)}).to_csv(tmp_path / "ratings.csv", index=False)

    world, info = fit_click_model(tmp_path / "ratings.csv", n_items=n_items, dim=1, steps=300)

    assert (info["n_users"], info["n_items"]) == (n_users, n_items)
    movie = np.array([int(t.split()[-1]) - 1000 for t in world.titles])  # no movies.csv: "item <id>"
    fitted = np.stack([world.user_probabilities(u) for u in range(n_users)])  # users sorted by id
    truth = p[:, movie]
    assert np.corrcoef(world.item_bias, b_i[movie])[0, 1] > 0.95
    assert np.corrcoef(fitted.ravel(), truth.ravel())[0, 1] > 0.85  # the interaction too, not just biases
    assert np.abs(fitted.mean(0) - truth.mean(0)).mean() < 0.04  # each item's click rate
    entropy = -np.mean(truth * np.log(truth) + (1 - truth) * np.log(1 - truth))
    assert info["train_logloss"] < entropy < info["heldout_logloss"] + 0.02
