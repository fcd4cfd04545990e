"""Integration: the real Ray Data pipeline on MovieLens ml-latest-small.

Protocol: every rating is an interaction (rating_threshold None), users with >= 5
interactions, leave-one-out by timestamp. The published dataset has 610 users and
100,836 ratings, each user with >= 20 ratings, so nothing is filtered.
"""

from __future__ import annotations

import pandas as pd
import pytest
from rayrec.config import load_config
from rayrec.data import store
from rayrec.data.pipeline import run_preprocess


@pytest.mark.slow  # preprocesses the 100k MovieLens ratings, ~30 s
@pytest.mark.shared_data
def test_ml_latest_small(tmp_path, ray_cluster, ml_latest_small):
    cfg = load_config(None, {"run_dir": str(tmp_path / "run"), "data.path": str(ml_latest_small),
                             "preprocess.min_user_interactions": 5, "preprocess.eval_negatives": 20})
    m = run_preprocess(cfg)
    c, d = m["counts"], cfg.data_dir
    assert m["source"]["kind"] == "ml-latest" and m["accounting"]["balanced"]
    assert c["rows_read"] == 100_836 and c["rows_rejected"] == 0 and c["duplicates_removed"] == 0
    assert c["rows_kept"] == 100_836 and c["users"] == 610
    assert c["interactions"] == {"train": 100_836 - 1220, "valid": 610, "test": 610}
    assert c["examples"] == c["interactions"]
    raw = pd.read_csv(ml_latest_small / "ratings.csv")
    assert c["items"] == raw.movieId.nunique()

    # leave-one-out by timestamp: each user's test item is their latest rating
    users = store.load_users(d)
    items = store.load_items(d)
    test = store.read_pandas(d, "interactions", "test").merge(users, on="user_idx").merge(
        items[["item_idx", "item_id"]], on="item_idx")
    latest = raw.groupby("userId").timestamp.max()
    assert (test.timestamp.to_numpy() == latest.loc[test.user_id.astype(int)].to_numpy()).all()
    train = store.read_pandas(d, "interactions", "train")
    valid = store.read_pandas(d, "interactions", "valid").set_index("user_idx")
    assert (train.groupby("user_idx").timestamp.max() <= valid.timestamp.loc[
        train.user_idx.unique()].sort_index()).all()
    assert users.n_train.sum() == len(train) and items.popularity.sum() == len(train)

    hist = store.load_histories(d)
    assert len(hist) == 610 and (hist.valid_item >= 0).all() and (hist.test_item >= 0).all()
    assert hist.history.map(len).max() == cfg.preprocess.max_history
    ex = store.read_pandas(d, "examples", "test")
    assert ex.candidates.map(len).eq(21).all()
    assert "Toy Story (1995) | Genres: Adventure, Animation" in items.text.iloc[0]
    ds = store.read_dataset(d, "examples", "train")
    assert ds.count() == c["examples"]["train"]
