"""The new-item protocol's dataset: the newest items held out of every training stage.

From a preprocessed dataset (any source), ``derive_new_item_dataset`` writes another one in
the same layout (:mod:`rayrec.data.schema`), so every stage (the retriever, the item tower,
ALS, popularity, the text index, evaluation) runs on it unchanged:

  held-out items  the newest ``fraction`` of the items that have a positive, by their first
                  positive's time (ties by item_idx): the catalog's "new releases"
  cut per user    t_u = the time of the user's first positive on a held-out item (inf if none)
  kept            every row of user u strictly before t_u that is not on a held-out item
                  (positives before t_u cannot be: t_u is the first contact; impressions can),
                  so no stage's input holds one
  test            one row per user with a held-out contact and at least ``min_history`` kept
                  positives: that first contact (ties: lowest item_idx). The input is
                  everything the user did before it (train + valid here)
  valid / train   the last kept positive of a user with >= 2 / the others (the retriever's
                  early stopping reads valid; the test split is only read by evaluation)
  items           every catalog item (held-out ones included: they are ranked), popularity
                  recounted on the new train split (held-out items: 0, so serving marks them
                  new), and a held-out item's text cut to what exists at its release: title
                  (with year) and genres, never tags gathered after it
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from rayrec import storage
from rayrec.data import store
from rayrec.data.schema import (
    HISTORIES_DIR,
    INTERACTIONS_DIR,
    ITEMS_FILE,
    MANIFEST_FILE,
    USERS_FILE,
)
from rayrec.data.text import item_text, parse_item_text

HELD_OUT_FILE = "new_items.json"  # held-out item_idx list and the protocol's counts


def held_out_items(positives: pd.DataFrame, fraction: float) -> np.ndarray:
    """item_idx of the newest ``fraction`` of items by first positive (sorted ids)."""
    first = positives.groupby("item_idx")["timestamp"].min().reset_index()
    first = first.sort_values(["timestamp", "item_idx"], kind="stable")
    n_held = int(round(fraction * len(first)))
    return np.sort(first["item_idx"].to_numpy(np.int64)[len(first) - n_held :])


def split_new_items(rows: pd.DataFrame, held: np.ndarray, min_history: int
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept rows with a ``split`` column 0 train / 1 valid, test rows): see the module doc."""
    rows = rows.sort_values(["user_idx", "timestamp", "item_idx"], kind="stable").reset_index(drop=True)
    on_held = np.isin(rows["item_idx"].to_numpy(), held) & (rows["label"].to_numpy() > 0)
    contact = rows[on_held].drop_duplicates("user_idx")  # first held-out positive per user
    cut = rows["user_idx"].map(contact.set_index("user_idx")["timestamp"]).fillna(np.inf).to_numpy()
    # also drops impressions (label 0) of held-out items: those would teach the ranker about them
    kept = rows[(rows["timestamp"].to_numpy() < cut) & ~np.isin(rows["item_idx"].to_numpy(), held)].copy()
    pos = kept["label"].to_numpy() > 0
    # valid: each user's last kept positive (users with at least 2), train: the rest
    last = kept[pos].groupby("user_idx").tail(1)
    n_pos = kept[pos].groupby("user_idx").size()
    last = last[last["user_idx"].map(n_pos) >= 2]
    kept["split"] = 0
    kept.loc[last.index, "split"] = 1
    eligible = n_pos[n_pos >= min_history].index
    test = contact[contact["user_idx"].isin(eligible)]
    return kept, test


def release_text(text: str) -> str:
    """An item's text as it reads at release: title (with year) and genres, no tags."""
    title, genres, _ = parse_item_text(text)
    return item_text(title, genres)


def derive_new_item_dataset(src_dir: str, out_dir: str, fraction: float, min_history: int = 2
                            ) -> dict[str, Any]:
    """Write the new-item protocol's dataset from ``src_dir`` to ``out_dir``; returns its counts."""
    rows = pd.concat([store.read_pandas(src_dir, "interactions", s) for s in ("train", "valid", "test")],
                     ignore_index=True)
    held = held_out_items(rows[rows["label"] > 0], fraction)
    kept, test = split_new_items(rows, held, min_history)
    assert not kept["item_idx"].isin(held).any()  # the protocol's invariant, cheap to check
    items = store.load_items(src_dir)
    train_pos = kept[(kept["split"] == 0) & (kept["label"] > 0)]
    items["popularity"] = items["item_idx"].map(train_pos.groupby("item_idx").size()).fillna(0).astype(np.int64)
    is_held = items["item_idx"].isin(held)
    items.loc[is_held, "text"] = items.loc[is_held, "text"].map(release_text)
    users = store.load_users(src_dir)
    users["n_train"] = users["user_idx"].map(train_pos.groupby("user_idx").size()).fillna(0).astype(np.int64)

    columns = [c for c in rows.columns if c != "split"]
    for name, part in (("train", kept[kept["split"] == 0]), ("valid", kept[kept["split"] == 1]),
                       ("test", test)):
        storage.write_table(part[columns].reset_index(drop=True),
                            storage.join(out_dir, INTERACTIONS_DIR, name, "part-0.parquet"))
    storage.write_table(items, storage.join(out_dir, ITEMS_FILE))
    storage.write_table(users, storage.join(out_dir, USERS_FILE))
    storage.write_table(_histories(kept, test, users["user_idx"]), storage.join(out_dir, HISTORIES_DIR,
                                                                               "part-0.parquet"))
    counts = {"source": src_dir, "fraction": fraction, "min_history": min_history,
              "held_out_items": int(len(held)), "items": int(len(items)),
              "first_release": int(rows[rows["item_idx"].isin(held) & (rows["label"] > 0)]["timestamp"].min()),
              "train_positives": int(len(train_pos)), "valid_users": int((kept["split"] == 1).sum()),
              "test_users": int(len(test)), "users": int(len(users))}
    storage.write_text(storage.join(out_dir, HELD_OUT_FILE),
                       json.dumps({**counts, "item_idx": held.tolist()}))
    manifest = store.load_manifest(src_dir) | {"new_items": counts}
    storage.write_text(storage.join(out_dir, MANIFEST_FILE), json.dumps(manifest, indent=2, default=str))  # last
    return counts


def load_held_out(data_dir: str) -> np.ndarray:
    """The held-out item_idx of a new-item dataset (FileNotFoundError for any other dataset)."""
    uri = storage.join(data_dir, HELD_OUT_FILE)
    if not storage.is_file(uri):
        raise FileNotFoundError(f"{data_dir} is not a new-item protocol dataset (no {HELD_OUT_FILE})")
    return np.asarray(json.loads(storage.read_text(uri))["item_idx"], dtype=np.int64)


def _histories(kept: pd.DataFrame, test: pd.DataFrame, user_idx: pd.Series, max_history: int = 20
               ) -> pd.DataFrame:
    """HISTORY_COLUMNS of the new dataset (what the serving feature store reads)."""
    pos = kept[kept["label"] > 0]
    train = pos[pos["split"] == 0].groupby("user_idx")["item_idx"].agg(lambda s: s.to_numpy(np.int64)[-max_history:])
    valid = pos[pos["split"] == 1].set_index("user_idx")["item_idx"]
    test_of = test.set_index("user_idx")["item_idx"]
    empty = np.zeros(0, np.int64)
    return pd.DataFrame({"user_idx": user_idx.to_numpy(np.int64),
                         "history": [train.get(u, empty) for u in user_idx],
                         "valid_item": [int(valid.get(u, -1)) for u in user_idx],
                         "test_item": [int(test_of.get(u, -1)) for u in user_idx]})
